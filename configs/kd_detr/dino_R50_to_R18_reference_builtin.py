# KD-DETR exactly as published (the authors' released code, Myleswork/KD-DETR) on the built-in
# data: DINO R-50 -> DINO R-18 as dino_R50_to_R18_builtin.py, with the reference's choices in
# place of d2kd's variant:
#   - general points: sigmoid(N(0, 1)) boxes, one set per batch shared by its images (300 in the
#     reference's COCO runs; 100 here, the built-in student's query count), fresh every step;
#   - specific points: all the teacher's detection anchors;
#   - class loss: T^2 KL(softmax(t/T) || softmax(s/T)) with T = 10, averaged over the classes,
#     summed over the points; boxes: L1 + GIoU, foreground-weighted means; weights 1 / 5 / 2;
#   - constant group weights (1 and 1, no general-to-specific schedule);
#   - foreground re-weighting by the teacher's best score (model.losses.kd_detr.foreground_weighting).
# benchmarks/kd_gain.py compares this with the variant.
from .dino_R50_to_R18_builtin import dataloader, lr_multiplier, model, optimizer, train

model.losses.kd_detr.num_general = 100
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

train.output_dir = "./output/kd_detr/dino_R50_to_R18_reference_builtin"
