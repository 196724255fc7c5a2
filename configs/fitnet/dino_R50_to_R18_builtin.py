# FitNet (Romero et al. 2015) on DETR encoder outputs, the feature-mimicking baseline of
# DETRDistill (Tab. 1, 3) and UniKD (Tab. 2), on the built-in shapes data: DINO R-50
# (../detr/dino_R50_builtin.py, width 256) -> DINO R-18 (../detr/dino_R18_builtin.py, width 128),
# the pair of ../detrdistill/dino_R50_to_R18_builtin.py, so the two compare directly.
# The 4 encoder-output levels (strides 8..64) are paired by stride, 1x1-conv adapters 128 -> 256,
# padded cells excluded; weight 1 (the loss is a per-cell, per-channel mean).
#
# Teacher: python train_net.py --config-file configs/detr/dino_R50_builtin.py (or set
# model.teacher.weights). The encoder input instead: model.losses.fitnet.source=encoder_input.
from detectron2.config import LazyCall as L

from d2kd.distill.fitnet import FitNet
from d2kd.meta_arch import DistillDETR, FrozenTeacher

from ..detr.dino_R18_builtin import dataloader, lr_multiplier, optimizer, train
from ..detr.dino_R18_builtin import model as _student
from ..detr.dino_R50_builtin import model as _teacher

model = L(DistillDETR)(
    student=_student,
    teacher=L(FrozenTeacher)(model=_teacher, weights="output/dino_R50_builtin/model_final.pth"),
    losses={
        "fitnet": L(FitNet)(
            student_channels="${model.student.embed_dim}",
            teacher_channels="${model.teacher.model.embed_dim}",
            num_levels="${model.student.num_feature_levels}",
            weight=1.0,
            source="features",
        ),
    },
    max_iter="${train.max_iter}",
)

train.output_dir = "./output/fitnet/dino_R50_to_R18_builtin"
