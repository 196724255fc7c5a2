# FCOS R-50-FPN on the built-in shapes data, built-in pretrained R-50, CPU-sized (see fcos_R18_fpn_builtin.py).
from d2kd.engine.backbone_pretrain import builtin_backbone_path

from .fcos_R18_fpn_builtin import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 50
train.init_checkpoint = builtin_backbone_path(50)
train.output_dir = "./output/fcos_R50_fpn_builtin"
