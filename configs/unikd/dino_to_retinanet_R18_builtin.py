# UniKD stage 2 on the built-in shapes data: DINO R-50 built-in teacher (AKEs:
# dino_R50_absorb_builtin.py) -> RetinaNet R-18 built-in student, with the student baseline's
# schedule and optimiser (configs/baselines/retinanet_R18_fpn_builtin.py). The teacher's levels
# (strides 8-64) are the student's P3-P6; its P7 is not used. Adaptor FFN 512.
from ..common.unikd import unikd_stage2
from ..baselines.retinanet_R18_fpn_builtin import dataloader, lr_multiplier, model as student, optimizer, train
from .dino_R50_absorb_builtin import model as absorb, train as absorb_train

model = unikd_stage2(
    student, absorb, absorb_train, student_channels=student.backbone.out_channels, adaptor_ffn_dim=512
)

train.output_dir = "./output/unikd_dino_to_retinanet_R18_builtin"
