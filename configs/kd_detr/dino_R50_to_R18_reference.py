# KD-DETR exactly as published (the authors' released code, Myleswork/KD-DETR), COCO: DINO-4scale
# R-50 -> R-18 as dino_R50_to_R18.py with the reference's choices (see
# dino_R50_to_R18_reference_builtin.py): 300 general points sigmoid(N(0, 1)) shared across the
# batch, all the teacher's anchors as specific points, KL with T = 10 (class mean, point sum),
# constant weights 1 and 1, foreground re-weighting.
from ..common.kd_detr import use_reference_kd_detr
from .dino_R50_to_R18 import dataloader, lr_multiplier, model, optimizer, smoke_test, train

use_reference_kd_detr(model.losses.kd_detr, num_general=300)

train.output_dir = "./output/kd_detr/dino_R50_to_R18_reference"
