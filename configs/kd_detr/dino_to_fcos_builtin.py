# KD-DETR, heterogeneous, FCOS student on the built-in shapes data: dino_to_retinanet_builtin.py
# with ../baselines/fcos_R18_fpn_builtin.py as the student. FCOS's "anchors" are stride-sized boxes
# centred on its locations (detectron2's representation); the teacher decodes those boxes and the
# student's class scores and decoded boxes there mimic the teacher's. Centerness is not distilled.
from detectron2.config import LazyCall as L

from d2kd.distill.kd_detr import KDDETR
from d2kd.meta_arch import FrozenTeacher, HeteroDistill

from ..baselines.fcos_R18_fpn_builtin import dataloader, lr_multiplier, optimizer, train
from ..baselines.fcos_R18_fpn_builtin import model as _student
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

train.output_dir = "./output/kd_detr/dino_to_fcos_builtin"
