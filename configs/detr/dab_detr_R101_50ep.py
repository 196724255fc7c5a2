# DAB-DETR R-101, COCO, 50 epochs (Liu et al. 2022, Table 2: 43.5 box AP): the teacher of
# ../kd_detr/dab_detr_R101_to_R50.py. Same recipe as dab_detr_R50_50ep.py.
from d2kd.engine.model_zoo import pretrained_weights

from .dab_detr_R50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = pretrained_weights("ImageNetPretrained/torchvision/R-101.pkl")
train.output_dir = "./output/dab_detr_R101_50ep"

# The config smoke test (tests/configs) trains one step from random weights: random frozen
# BatchNorm statistics make R-101's C5 features ~1e5, and DAB-DETR's plain 1x1 projection passes
# them to full attention, whose backward overflows; batch statistics keep that one step finite.
smoke_test = dict(overrides=["model.backbone.bottom_up.stages.norm=BN"])
