# KD-DETR, heterogeneous (Wang et al., CVPR 2024, Sec. 4.4: +2.1 AP): DINO-4scale R-50 teacher
# (../detr/dino_R50_4scale_12ep.py) -> Faster R-CNN R-50-FPN student, COCO 1x (SGD 0.02, batch
# 16, 90k iterations, as ../baselines/faster_rcnn_R50_fpn_1x.py).
#   python train_net.py --config-file configs/kd_detr/dino_to_frcnn.py --num-gpus 8
# Distillation points per image: 300 general boxes (uniform centres, log-uniform sizes, clipped
# to the image, fresh every step) + the teacher's 300 top-scoring proposals. The teacher decodes
# them as anchor queries (isolated from its detection queries); the student's box head runs on
# them as extra RoIs (not sampled, not matched, its RPN/RoI losses untouched). Class: KL from the
# teacher's class distribution given foreground (its sigmoid scores normalised over the K classes)
# to the student's softmax over its K object logits, the background logit left to the student's
# own losses (KDDETR(rcnn_class_target="foreground"), chosen by measurement: see
# d2kd/distill/kd_detr.py); boxes: the student's box for the teacher's top class, L1 5 + GIoU 2;
# each point weighted by the teacher's best score.
#
# Teacher checkpoint (model.teacher.weights): default output/dino_R50_4scale_12ep/model_final.pth
# (python train_net.py --config-file configs/detr/dino_R50_4scale_12ep.py --num-gpus 8).
# Input format: the student is detectron2's standard Faster R-CNN R-50-FPN 1x (MSRA R-50, BGR
# images, ../baselines/faster_rcnn_R50_fpn_1x.py unchanged, so its baseline is that config); the
# DINO teacher was trained on RGB, so the teacher flips the channels of the images it is given
# (FrozenTeacher(flip_channels=True)) and each model sees the input it was trained on.
from detectron2.config import LazyCall as L

from d2kd.distill.kd_detr import KDDETR
from d2kd.meta_arch import FrozenTeacher, HeteroDistill

from ..baselines.faster_rcnn_R50_fpn_1x import dataloader, lr_multiplier, optimizer, train
from ..baselines.faster_rcnn_R50_fpn_1x import model as _student
from ..detr.dino_R50_4scale_12ep import model as _teacher
from ..detr.dino_R50_4scale_12ep import train as _teacher_train

model = L(HeteroDistill)(
    student=_student,
    teacher=L(FrozenTeacher)(
        model=_teacher, weights=_teacher_train.output_dir + "/model_final.pth", flip_channels=True
    ),
    losses={
        "kd_detr": L(KDDETR)(
            name="kd_detr",
            num_general=300,
            num_specific=300,
            general_weight=(1.0, 0.5),
            specific_weight=(0.5, 1.0),
        ),
    },
    max_iter="${train.max_iter}",
)

train.output_dir = "./output/kd_detr/dino_to_frcnn"

# The config smoke test (tests/configs) runs one CPU step: fewer queries and points there.
smoke_test = dict(overrides=["model.teacher.model.num_queries=100", "model.losses.kd_detr.num_general=50",
                             "model.losses.kd_detr.num_specific=50"])
