# UniKD stage 2 on the built-in shapes data: Faster R-CNN R-50 built-in teacher (AKEs:
# frcnn_R50_absorb_builtin.py) -> Faster R-CNN R-18 built-in student, with the student
# baseline's schedule and optimiser (configs/baselines/faster_rcnn_R18_fpn_builtin.py). Same FPN
# levels (P2-P6, strides 4-64, width 128) on both sides. Adaptor FFN 512.
from ..common.unikd import unikd_stage2
from ..baselines.faster_rcnn_R18_fpn_builtin import dataloader, lr_multiplier, model as student, optimizer, train
from .frcnn_R50_absorb_builtin import model as absorb, train as absorb_train

model = unikd_stage2(
    student, absorb, absorb_train, student_channels=student.backbone.out_channels, adaptor_ffn_dim=512
)

train.output_dir = "./output/unikd_frcnn_R50_to_frcnn_R18_builtin"
