# KD-DETR (Wang et al., CVPR 2024) as published, COCO: DINO-4scale R-50
# (../detr/dino_R50_4scale_12ep.py) -> DINO-4scale R-18 (the same recipe and 12-epoch schedule
# with a torchvision ImageNet R-18). Points, losses and schedule as dino_R101_to_R50.py (300
# general points, use_reference_kd_detr). d2kd's variant: dino_R50_to_R18_variant.py.
#
# Teacher checkpoint (model.teacher.weights): default output/dino_R50_4scale_12ep/model_final.pth
# (python train_net.py --config-file configs/detr/dino_R50_4scale_12ep.py --num-gpus 8).
# Fewer student decoder layers (each one mimics the teacher's last): model.student.decoder.num_layers=3.
from detectron2.config import LazyCall as L

from d2kd.distill.kd_detr import KDDETR
from d2kd.engine.model_zoo import pretrained_weights
from d2kd.meta_arch import DistillDETR, FrozenTeacher

from ..common.kd_detr import use_reference_kd_detr
from ..detr.dino_R50_4scale_12ep import dataloader, lr_multiplier, optimizer, train
from ..detr.dino_R50_4scale_12ep import model as _student
from ..detr.dino_R50_4scale_12ep import model as _teacher
from ..detr.dino_R50_4scale_12ep import train as _teacher_train

_student.backbone.bottom_up.stages.depth = 18

model = L(DistillDETR)(
    student=_student,
    teacher=L(FrozenTeacher)(model=_teacher, weights=_teacher_train.output_dir + "/model_final.pth"),
    losses={
        "kd_detr": L(KDDETR)(name="kd_detr"),
    },
    max_iter="${train.max_iter}",
)

use_reference_kd_detr(model.losses.kd_detr, num_general=300)

train.init_checkpoint = pretrained_weights("ImageNetPretrained/torchvision/R-18.pkl")
train.output_dir = "./output/kd_detr/dino_R50_to_R18"

# The config smoke test (tests/configs) runs one CPU step: fewer queries and points there.
smoke_test = dict(overrides=["model.teacher.model.num_queries=100", "model.student.num_queries=100",
                             "model.losses.kd_detr.num_general=50"])
