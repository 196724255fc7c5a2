# KD-DETR exactly as published (the authors' released code, Myleswork/KD-DETR), COCO: DINO-4scale
# R-50 -> R-18 as dino_R50_to_R18.py with the reference's choices (see
# dino_R50_to_R18_reference_builtin.py): 300 general points sigmoid(N(0, 1)) shared across the
# batch, all the teacher's anchors as specific points, KL with T = 10 (class mean, point sum),
# constant weights 1 and 1, foreground re-weighting.
from .dino_R50_to_R18 import dataloader, lr_multiplier, model, optimizer, smoke_test, train

model.losses.kd_detr.num_general = 300
model.losses.kd_detr.num_specific = None
model.losses.kd_detr.distribution = "normal"
model.losses.kd_detr.share_points_across_batch = True
model.losses.kd_detr.general_weight = 1.0
model.losses.kd_detr.specific_weight = 1.0
model.losses.kd_detr.class_loss = "kl"
model.losses.kd_detr.temperature = 10.0
model.losses.kd_detr.normalization = "reference"
model.losses.kd_detr.foreground_weighting = True
model.losses.kd_detr.content = "zero"  # DAB-DETR's queries: zero content

train.output_dir = "./output/kd_detr/dino_R50_to_R18_reference"
