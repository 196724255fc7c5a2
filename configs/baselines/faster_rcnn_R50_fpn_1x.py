# Faster R-CNN R-50-FPN, COCO 1x (detectron2 model zoo: 37.9 box AP), 8 GPUs x 2 images.
# ImageNet weights are read from $D2KD_WEIGHTS/ImageNetPretrained/MSRA/R-50.pkl (no download).
from d2kd.engine.model_zoo import pretrained_weights

from ..common.data.coco import dataloader
from ..common.models.faster_rcnn_fpn import model
from ..common.optim import SGD as optimizer
from ..common.schedule import lr_multiplier_1x as lr_multiplier
from ..common.train import train

model.backbone.bottom_up.stages.depth = 50
optimizer.lr = 0.02
train.max_iter = 90000
train.init_checkpoint = pretrained_weights("ImageNetPretrained/MSRA/R-50.pkl")
train.output_dir = "./output/faster_rcnn_R50_fpn_1x"
