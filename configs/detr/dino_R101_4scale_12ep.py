# DINO-4scale R-101, COCO, 12 epochs: dino_R50_4scale_12ep.py with a ResNet-101 (torchvision
# ImageNet weights converted to detectron2's format, from $D2KD_WEIGHTS).
from d2kd.engine.model_zoo import pretrained_weights

from .dino_R50_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = pretrained_weights("ImageNetPretrained/torchvision/R-101.pkl")
train.output_dir = "./output/dino_R101_4scale_12ep"
