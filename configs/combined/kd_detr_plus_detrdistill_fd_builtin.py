# KD-DETR (Wang et al. 2024) plus DETRDistill's target-aware feature distillation (Chang et al.
# 2023, Sec. 4.2, Eq. 8) in one run, on the built-in shapes data: DINO R-50
# (../detr/dino_R50_builtin.py) -> DINO R-18 (../detr/dino_R18_builtin.py). The two act on
# different things -- KD-DETR on predictions at shared distillation points (its own isolated
# query groups), FD on the encoder output -- so they add up without interfering.
# KD-DETR: d2kd.distill.kd_detr.KDDETR defaults, 100 general points (the student's query count);
# FD: lambda2 = 20, adapters 128 -> 256 on the 4 encoder-output levels.
# Teacher: python train_net.py --config-file configs/detr/dino_R50_builtin.py (or set
# model.teacher.weights).
from detectron2.config import LazyCall as L

from d2kd.distill.kd_detr import KDDETR
from d2kd.meta_arch import DistillDETR, FrozenTeacher

from ..common.detrdistill import detrdistill_losses
from ..detr.dino_R18_builtin import dataloader, lr_multiplier, optimizer, train
from ..detr.dino_R18_builtin import model as _student
from ..detr.dino_R50_builtin import model as _teacher

model = L(DistillDETR)(
    student=_student,
    teacher=L(FrozenTeacher)(model=_teacher, weights="output/dino_R50_builtin/model_final.pth"),
    losses={
        "kd_detr": L(KDDETR)(name="kd_detr", num_general=100),
        **detrdistill_losses(("fd",)),
    },
    max_iter="${train.max_iter}",
)

train.output_dir = "./output/combined/kd_detr_plus_detrdistill_fd_builtin"
