# RetinaNet R-50-FPN on the built-in shapes data, from scratch, CPU-sized
# (see retinanet_R18_fpn_builtin.py).
from .retinanet_R18_fpn_builtin import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 50
train.output_dir = "./output/retinanet_R50_fpn_builtin"
