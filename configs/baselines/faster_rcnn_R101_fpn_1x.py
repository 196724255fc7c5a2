# Faster R-CNN R-101-FPN, COCO 1x (the usual teacher of the students).
from d2kd.engine.model_zoo import pretrained_weights

from .faster_rcnn_R50_fpn_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = pretrained_weights("ImageNetPretrained/MSRA/R-101.pkl")
train.output_dir = "./output/faster_rcnn_R101_fpn_1x"
