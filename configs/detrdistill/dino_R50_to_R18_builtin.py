# DETRDistill (Chang et al. 2023) on the built-in shapes data, CPU-sized: DINO R-50
# (../detr/dino_R50_builtin.py: width 256, 3 enc / 4 dec layers, 200 queries) distilled into
# DINO R-18 (../detr/dino_R18_builtin.py: width 128, 2 enc / 3 dec layers, 100 queries), all three
# losses with the paper's weights (lambda1 = 1, lambda2 = 20, lambda3 = 1, Sec. 4.4).
#
# - LD: teacher decoder stages 4 -> 3 grouped as {1, 2}, {3}, {4}: teacher stages 2, 3, 4 supervise
#   student stages 1, 2, 3 (1-based; d2kd.distill.detrdistill.stage_groups).
# - FD: the 4 encoder-output levels (strides 8..64), adapters 128 -> 256.
# - AD: the teacher's 200 queries (content mapped 256 -> 128) decoded as an extra student group.
#
# Teacher: train it first (python train_net.py --config-file configs/detr/dino_R50_builtin.py
# writes output/dino_R50_builtin/model_final.pth), or point model.teacher.weights elsewhere.
# One component alone (Tab. 5): dino_R50_to_R18_{ld,fd,ad}_builtin.py. LD variants on the command
# line: model.losses.ld.terms=[neg_box] (Tab. 6), model.losses.ld.progressive=False (Tab. 7),
# model.losses.ld.score_threshold=0.5.
from detectron2.config import LazyCall as L

from d2kd.meta_arch import DistillDETR, FrozenTeacher

from ..common.detrdistill import detrdistill_losses
from ..detr.dino_R18_builtin import dataloader, lr_multiplier, optimizer, train
from ..detr.dino_R18_builtin import model as _student
from ..detr.dino_R50_builtin import model as _teacher

model = L(DistillDETR)(
    student=_student,
    teacher=L(FrozenTeacher)(model=_teacher, weights="output/dino_R50_builtin/model_final.pth"),
    losses=detrdistill_losses(),
    max_iter="${train.max_iter}",
)

train.output_dir = "./output/detrdistill/dino_R50_to_R18_builtin"
