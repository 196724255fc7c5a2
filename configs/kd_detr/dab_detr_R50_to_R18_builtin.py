# KD-DETR on the built-in shapes data: DAB-DETR R-50 (../detr/dab_detr_R50_builtin.py) ->
# DAB-DETR R-18 (../detr/dab_detr_R18_builtin.py), the built-in twin of dab_detr_R101_to_R50.py:
# 100 general points per image + the teacher's 100 anchors as specific points.
# Teacher: python train_net.py --config-file configs/detr/dab_detr_R50_builtin.py
from detectron2.config import LazyCall as L

from d2kd.distill.kd_detr import KDDETR
from d2kd.meta_arch import DistillDETR, FrozenTeacher

from ..detr.dab_detr_R18_builtin import dataloader, lr_multiplier, optimizer, train
from ..detr.dab_detr_R18_builtin import model as _student
from ..detr.dab_detr_R50_builtin import model as _teacher
from ..detr.dab_detr_R50_builtin import train as _teacher_train

model = L(DistillDETR)(
    student=_student,
    teacher=L(FrozenTeacher)(model=_teacher, weights=_teacher_train.output_dir + "/model_final.pth"),
    losses={
        "kd_detr": L(KDDETR)(
            name="kd_detr",
            num_general=100,
            num_specific=None,  # all the teacher's anchors
            general_weight=(1.0, 0.5),
            specific_weight=(0.5, 1.0),
            class_loss="bce",
        ),
    },
    max_iter="${train.max_iter}",
)

train.output_dir = "./output/kd_detr/dab_detr_R50_to_R18_builtin"
