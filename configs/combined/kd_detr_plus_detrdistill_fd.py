# COCO twin of kd_detr_plus_detrdistill_fd_builtin.py: KD-DETR plus DETRDistill's target-aware
# feature distillation, DINO-4scale R-101 (../detr/dino_R101_4scale_12ep.py) -> DINO-4scale R-50
# (../detr/dino_R50_4scale_12ep.py), the student's recipe and 12-epoch schedule unchanged.
# KD-DETR: d2kd.distill.kd_detr.KDDETR defaults (300 general points); FD: lambda2 = 20, adapters
# 256 -> 256 on the 4 encoder-output levels.
# Teacher checkpoint (model.teacher.weights): default output/dino_R101_4scale_12ep/model_final.pth
# (python train_net.py --config-file configs/detr/dino_R101_4scale_12ep.py --num-gpus 8).
from detectron2.config import LazyCall as L

from d2kd.distill.kd_detr import KDDETR
from d2kd.meta_arch import DistillDETR, FrozenTeacher

from ..common.detrdistill import detrdistill_losses
from ..detr.dino_R101_4scale_12ep import model as _teacher
from ..detr.dino_R50_4scale_12ep import dataloader, lr_multiplier, optimizer, train
from ..detr.dino_R50_4scale_12ep import model as _student

model = L(DistillDETR)(
    student=_student,
    teacher=L(FrozenTeacher)(model=_teacher, weights="output/dino_R101_4scale_12ep/model_final.pth"),
    losses={
        "kd_detr": L(KDDETR)(name="kd_detr", num_general=300),
        **detrdistill_losses(("fd",)),
    },
    max_iter="${train.max_iter}",
)

# train.init_checkpoint (ImageNet R-50) reaches student.backbone.* by detectron2's suffix matching.
train.output_dir = "./output/combined/kd_detr_plus_detrdistill_fd"
# the config smoke test (tests/configs) runs a smaller query set: 900 queries are slow on a CPU
smoke_test = dict(overrides=["model.teacher.model.num_queries=100", "model.student.num_queries=100",
                             "model.losses.kd_detr.num_general=50"])
