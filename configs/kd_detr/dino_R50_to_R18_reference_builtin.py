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
from ..common.kd_detr import use_reference_kd_detr
from .dino_R50_to_R18_builtin import dataloader, lr_multiplier, model, optimizer, train

use_reference_kd_detr(model.losses.kd_detr, num_general=100)

train.output_dir = "./output/kd_detr/dino_R50_to_R18_reference_builtin"
