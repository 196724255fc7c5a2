# d2kd's variant of KD-DETR, COCO: DINO-4scale R-50 -> R-18 as dino_R50_to_R18.py (the published
# method) with d2kd's choices (KDDETR's defaults; see
# dino_R50_to_R18_variant_builtin.py): 300 uniform general points per image, fresh every step;
# the teacher's 900 selected proposals as specific points, its targets there its own detection
# outputs; per-class binary KL (T = 1); general weight 1 -> 0.5, specific 0.5 -> 1 over training.
# The offline twin dino_R50_to_R18_offline.py builds on this config.
from detectron2.config import LazyCall as L

from d2kd.distill.kd_detr import KDDETR

from .dino_R50_to_R18 import dataloader, lr_multiplier, model, optimizer, smoke_test, train

# KDDETR's defaults are the variant; a fresh node, so nothing of the published settings stays.
model.losses.kd_detr = L(KDDETR)(name="kd_detr", num_general=300)

train.output_dir = "./output/kd_detr/dino_R50_to_R18_variant"
