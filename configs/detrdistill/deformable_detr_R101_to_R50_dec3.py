# deformable_detr_R101_to_R50.py with a 3-decoder-layer student (Sec. 5.2, Tab. 4 setting "6/3":
# a 6-layer teacher decoder distilled into a 3-layer one). LD groups the teacher's stages
# {1, 2}, {3, 4}, {5, 6} (Fig. 5): teacher stages 2, 4, 6 supervise student stages 1, 2, 3
# (1-based; d2kd.distill.detrdistill.stage_groups). FD and AD are unaffected by the depth.
from .deformable_detr_R101_to_R50 import dataloader, lr_multiplier, model, optimizer, train

model.student.decoder.num_layers = 3
train.output_dir = "./output/detrdistill/deformable_detr_R101_to_R50_dec3"
