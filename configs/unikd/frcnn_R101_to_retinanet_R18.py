# UniKD stage 2 (injecting, Eq. 7-8): Faster R-CNN R-101-FPN teacher -> RetinaNet R-18-FPN
# student (heterogeneous; paper Tab. 2/10: 31.7 -> 34.8 with a RepPoints teacher), COCO 1x
# (SGD 0.01, momentum 0.9, weight decay 1e-4, lr / 10 at epochs 8 and 11, batch 16).
# AKEs from frcnn_R101_absorb.py. The teacher's P2 (stride 4) is upsampled from the student's
# P3 for the adaptor; the student's P7 is not used (d2kd/distill/unikd.py, level alignment).
# Input format: the student keeps the input of its baseline (../baselines/retinanet_R18_fpn_1x.py
# unchanged, so that config is its baseline); the teacher (MSRA R-101, trained on BGR) flips the
# channels of what it is given when the two orders differ (FrozenTeacher.flip_channels).
from ..common.unikd import unikd_stage2
from ..baselines.retinanet_R18_fpn_1x import dataloader, lr_multiplier, model as student, optimizer, train
from .frcnn_R101_absorb import model as absorb, train as absorb_train

absorb.teacher.flip_channels = True  # RetinaNet R-18 (torchvision start) reads RGB

model = unikd_stage2(
    student, absorb, absorb_train, student_channels=student.backbone.out_channels, adaptor_ffn_dim=1024
)

train.output_dir = "./output/unikd_frcnn_R101_to_retinanet_R18"
