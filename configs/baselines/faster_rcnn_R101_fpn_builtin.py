# Faster R-CNN R-101-FPN on the built-in shapes data (a teacher), from scratch, CPU-sized heads
# (see faster_rcnn_R18_fpn_builtin.py).
from .faster_rcnn_R18_fpn_builtin import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 101
train.output_dir = "./output/faster_rcnn_R101_fpn_builtin"
