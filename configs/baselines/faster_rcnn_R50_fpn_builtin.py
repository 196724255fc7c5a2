# Faster R-CNN R-50-FPN on the built-in shapes data, built-in pretrained R-50, CPU-sized heads
# (see faster_rcnn_R18_fpn_builtin.py).
from d2kd.engine.backbone_pretrain import builtin_backbone_path

from .faster_rcnn_R18_fpn_builtin import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 50
train.init_checkpoint = builtin_backbone_path(50)
train.output_dir = "./output/faster_rcnn_R50_fpn_builtin"
