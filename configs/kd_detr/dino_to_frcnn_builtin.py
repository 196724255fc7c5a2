# KD-DETR, heterogeneous, on the built-in shapes data (the CPU twin of dino_to_frcnn.py): DINO R-50
# teacher (../detr/dino_R50_builtin.py) -> Faster R-CNN R-18-FPN student
# (../baselines/faster_rcnn_R18_fpn_builtin.py, its recipe and schedule unchanged; both models
# read the loader's BGR images with their own statistics). 100 general boxes + the teacher's 100
# top-scoring proposals per image, fed to the student's box head as extra RoIs; losses as in
# dino_to_frcnn.py.
# Teacher: python train_net.py --config-file configs/detr/dino_R50_builtin.py
#   (writes output/dino_R50_builtin/model_final.pth, the default of model.teacher.weights).
from detectron2.config import LazyCall as L

from d2kd.distill.kd_detr import KDDETR
from d2kd.meta_arch import FrozenTeacher, HeteroDistill

from ..baselines.faster_rcnn_R18_fpn_builtin import dataloader, lr_multiplier, optimizer, train
from ..baselines.faster_rcnn_R18_fpn_builtin import model as _student
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
            general_weight=(1.0, 0.5),
            specific_weight=(0.5, 1.0),
        ),
    },
    max_iter="${train.max_iter}",
)

train.output_dir = "./output/kd_detr/dino_to_frcnn_builtin"
