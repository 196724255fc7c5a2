# FCOS R-50-FPN on the built-in shapes data, from scratch, CPU-sized (see fcos_R18_fpn_builtin.py).
from .fcos_R18_fpn_builtin import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 50
train.output_dir = "./output/fcos_R50_fpn_builtin"
