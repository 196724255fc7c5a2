# KD-DETR, heterogeneous, dense student, on the built-in shapes data: DINO R-50 teacher
# (../detr/dino_R50_builtin.py) -> RetinaNet R-18-FPN (../baselines/retinanet_R18_fpn_builtin.py,
# its recipe and schedule unchanged). A dense detector predicts only at its own anchors, so the
# distillation points are those anchors (point_source="student_anchors"): 100 random anchors
# centred in the image + for each of the teacher's 100 top proposals the anchor overlapping it
# most; the teacher decodes them as anchor queries after the student's pass. Both heads are
# sigmoid: class loss = binary KL, boxes = the student's decoded regression, L1 5 + GIoU 2.
# Online only (the points depend on the student). FCOS: dino_to_fcos_builtin.py.
# Teacher: python train_net.py --config-file configs/detr/dino_R50_builtin.py
from detectron2.config import LazyCall as L

from d2kd.distill.kd_detr import KDDETR
from d2kd.meta_arch import FrozenTeacher, HeteroDistill

from ..baselines.retinanet_R18_fpn_builtin import dataloader, lr_multiplier, optimizer, train
from ..baselines.retinanet_R18_fpn_builtin import model as _student
from ..detr.dino_R50_builtin import model as _teacher
from ..detr.dino_R50_builtin import train as _teacher_train

model = L(HeteroDistill)(
    student=_student,
    teacher=L(FrozenTeacher)(model=_teacher, weights=_teacher_train.output_dir + "/model_final.pth"),
    losses={
        "kd_detr": L(KDDETR)(
            name="kd_detr",
            num_general=100,
            num_specific=100,
            point_source="student_anchors",
        ),
    },
    max_iter="${train.max_iter}",
)

train.output_dir = "./output/kd_detr/dino_to_retinanet_builtin"
