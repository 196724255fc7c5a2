# Faster R-CNN R-101-FPN on the built-in shapes data (a teacher), built-in pretrained R-101
# (`python -m d2kd.tools.pretrain_backbone --depth 101`), CPU-sized heads
# (see faster_rcnn_R18_fpn_builtin.py).
from d2kd.engine.backbone_pretrain import builtin_backbone_path

from .faster_rcnn_R18_fpn_builtin import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = builtin_backbone_path(101)
train.output_dir = "./output/faster_rcnn_R101_fpn_builtin"
