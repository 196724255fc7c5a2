# UniKD stage 2 on the built-in shapes data: DINO R-50 built-in teacher (AKEs:
# dino_R50_absorb_builtin.py) -> Deformable DETR R-18 built-in student, with the student
# baseline's schedule and optimiser (configs/detr/deformable_detr_R18_builtin.py). The AKEs read
# the student's encoder output (width 128, strides 8-64: the teacher's levels). Adaptor FFN 512.
from ..common.unikd import unikd_stage2
from ..detr.deformable_detr_R18_builtin import dataloader, lr_multiplier, model as student, optimizer, train
from .dino_R50_absorb_builtin import model as absorb, train as absorb_train

model = unikd_stage2(student, absorb, absorb_train, student_channels=student.embed_dim, adaptor_ffn_dim=512)

train.output_dir = "./output/unikd_dino_to_deformable_detr_R18_builtin"
