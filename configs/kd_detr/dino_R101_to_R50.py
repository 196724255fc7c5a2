# KD-DETR (Wang et al., CVPR 2024), COCO: DINO-4scale R-101 (../detr/dino_R101_4scale_12ep.py)
# -> DINO-4scale R-50 (../detr/dino_R50_4scale_12ep.py), the student's recipe and 12-epoch
# schedule unchanged (AdamW 1e-4, batch 16, 90k iterations).
# Distillation points (d2kd/distill/kd_detr.py): 300 general points per image (uniform centres,
# log-uniform sizes 2%-80% of the image side, fresh every step) + the teacher's 900 selected
# proposals as specific points (the reference decodes all the teacher's anchors); general weight
# 1 -> 0.5, specific 0.5 -> 1 over training; binary KL to the teacher's sigmoid scores; weights
# cls 1, L1 5, GIoU 2 per group, each point weighted by the teacher's best class score.
#
# Teacher checkpoint (model.teacher.weights): default output/dino_R101_4scale_12ep/model_final.pth
# (python train_net.py --config-file configs/detr/dino_R101_4scale_12ep.py --num-gpus 8);
# a missing file stops the run at start-up with the path in the message.
# Variants: see dino_R50_to_R18_builtin.py (general-only, specific-only, the reference's setup);
# fewer specific points (top proposals): model.losses.kd_detr.num_specific=300.
from detectron2.config import LazyCall as L

from d2kd.distill.kd_detr import KDDETR
from d2kd.meta_arch import DistillDETR, FrozenTeacher

from ..detr.dino_R101_4scale_12ep import model as _teacher
from ..detr.dino_R101_4scale_12ep import train as _teacher_train
from ..detr.dino_R50_4scale_12ep import dataloader, lr_multiplier, optimizer, train
from ..detr.dino_R50_4scale_12ep import model as _student

model = L(DistillDETR)(
    student=_student,
    teacher=L(FrozenTeacher)(model=_teacher, weights=_teacher_train.output_dir + "/model_final.pth"),
    losses={
        "kd_detr": L(KDDETR)(
            name="kd_detr",
            num_general=300,
            num_specific=None,
            general_weight=(1.0, 0.5),
            specific_weight=(0.5, 1.0),
            class_loss="bce",
        ),
    },
    max_iter="${train.max_iter}",
)

# train.init_checkpoint (ImageNet R-50) reaches student.backbone.* by detectron2's suffix matching.
train.output_dir = "./output/kd_detr/dino_R101_to_R50"

# The config smoke test (tests/configs) runs one CPU step: fewer queries and points there.
smoke_test = dict(overrides=["model.teacher.model.num_queries=100", "model.student.num_queries=100",
                             "model.losses.kd_detr.num_general=50"])
