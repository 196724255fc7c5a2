# KD-DETR (Wang et al., CVPR 2024) as published (the authors' released code, Myleswork/KD-DETR)
# on the built-in shapes data: DINO R-50 (../detr/dino_R50_builtin.py: width 256, 200 queries,
# 4 decoder layers) -> DINO R-18 (../detr/dino_R18_builtin.py: width 128, 100 queries, 3 decoder
# layers; every student layer mimics the teacher's last one), the student's recipe and schedule
# unchanged. The published settings (../common/kd_detr.py, use_reference_kd_detr):
#   - general points: 100 boxes (the built-in student's query count; the paper's COCO runs use
#     300) drawn as sigmoid(N(0, 1)) for each of cx, cy, w, h, redrawn every step, one set for
#     all the images of a batch;
#   - specific points: every detection anchor of the teacher, decoded again by the teacher with
#     zero content (its own detection outputs are not reused);
#   - class loss: T^2 KL(softmax(t/T) || softmax(s/T)) with T = 10, averaged over the classes and
#     summed over the points; boxes: L1 + GIoU as foreground-weighted means; weights cls 1, L1 5,
#     GIoU 2;
#   - group weights constant at 1 and 1 (no general-to-specific schedule), every point weighted
#     by the teacher's best class score (foreground re-weighting).
# d2kd's variant (uniform per-image points, general 1 -> 0.5 / specific 0.5 -> 1, per-class binary
# KL, reused teacher detections): dino_R50_to_R18_variant_builtin.py.
#
# Teacher: python train_net.py --config-file configs/detr/dino_R50_builtin.py
#   (writes output/dino_R50_builtin/model_final.pth, the default of model.teacher.weights).
# Ablations (command-line overrides, as benchmarks/kd_gain.py runs them):
#   general points only:      model.losses.kd_detr.specific_weight=0
#   specific points only:     model.losses.kd_detr.general_weight=0
#   without re-weighting:     model.losses.kd_detr.foreground_weighting=False
from detectron2.config import LazyCall as L

from d2kd.distill.kd_detr import KDDETR
from d2kd.meta_arch import DistillDETR, FrozenTeacher

from ..common.kd_detr import use_reference_kd_detr
from ..detr.dino_R18_builtin import dataloader, lr_multiplier, optimizer, train
from ..detr.dino_R18_builtin import model as _student
from ..detr.dino_R50_builtin import model as _teacher
from ..detr.dino_R50_builtin import train as _teacher_train

model = L(DistillDETR)(
    student=_student,
    teacher=L(FrozenTeacher)(model=_teacher, weights=_teacher_train.output_dir + "/model_final.pth"),
    losses={
        "kd_detr": L(KDDETR)(name="kd_detr"),
    },
    max_iter="${train.max_iter}",
)

use_reference_kd_detr(model.losses.kd_detr, num_general=100)

train.output_dir = "./output/kd_detr/dino_R50_to_R18_builtin"
