# Faster R-CNN R-18-FPN, COCO 1x (a distillation student). The model zoo has no MSRA R-18:
# it starts from torchvision's ImageNet R-18, converted with detectron2's
# tools/convert-torchvision-to-d2.py, so inputs are RGB with torchvision's normalisation.
from d2kd.engine.model_zoo import pretrained_weights

from .faster_rcnn_R50_fpn_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 18
model.pixel_mean = [123.675, 116.280, 103.530]
model.pixel_std = [58.395, 57.120, 57.375]
model.input_format = "RGB"
dataloader.train.mapper.image_format = "RGB"  # the test mapper follows
train.init_checkpoint = pretrained_weights("ImageNetPretrained/torchvision/R-18.pkl")
train.output_dir = "./output/faster_rcnn_R18_fpn_1x"
