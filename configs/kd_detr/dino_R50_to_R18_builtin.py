# KD-DETR (Wang et al., CVPR 2024) on the built-in shapes data: DINO R-50
# (../detr/dino_R50_builtin.py: width 256, 200 queries, 4 decoder layers) -> DINO R-18
# (../detr/dino_R18_builtin.py: width 128, 100 queries, 3 decoder layers; every student layer
# mimics the teacher's last one), the student's recipe and schedule unchanged.
# Distillation points (d2kd/distill/kd_detr.py): 100 general points per image (uniform centres,
# log-uniform sizes, fresh every step) + the teacher's 200 selected proposals as specific points;
# general-to-specific: general weight 1 -> 0.5, specific 0.5 -> 1 over training; class loss:
# binary KL to the teacher's sigmoid scores; weights cls 1, L1 5, GIoU 2; foreground re-weighting.
#
# Teacher: python train_net.py --config-file configs/detr/dino_R50_builtin.py
#   (writes output/dino_R50_builtin/model_final.pth, the default of model.teacher.weights).
# Variants (command-line overrides):
#   general points only:   model.losses.kd_detr.specific_weight=0
#   specific points only:  model.losses.kd_detr.general_weight=0
#   the reference's setup: model.losses.kd_detr.general_weight=1 model.losses.kd_detr.specific_weight=1
#                          model.losses.kd_detr.class_loss=kl model.losses.kd_detr.distribution=normal
from detectron2.config import LazyCall as L

from d2kd.distill.kd_detr import KDDETR
from d2kd.meta_arch import DistillDETR, FrozenTeacher

from ..detr.dino_R18_builtin import dataloader, lr_multiplier, optimizer, train
from ..detr.dino_R18_builtin import model as _student
from ..detr.dino_R50_builtin import model as _teacher
from ..detr.dino_R50_builtin import train as _teacher_train

model = L(DistillDETR)(
    student=_student,
    teacher=L(FrozenTeacher)(model=_teacher, weights=_teacher_train.output_dir + "/model_final.pth"),
    losses={
        "kd_detr": L(KDDETR)(
            name="kd_detr",
            num_general=100,
            num_specific=None,  # all the teacher's detection queries
            general_weight=(1.0, 0.5),
            specific_weight=(0.5, 1.0),
            class_loss="bce",
        ),
    },
    max_iter="${train.max_iter}",
)

train.output_dir = "./output/kd_detr/dino_R50_to_R18_builtin"
