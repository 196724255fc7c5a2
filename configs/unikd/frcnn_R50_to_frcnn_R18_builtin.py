# UniKD stage 2 on the built-in shapes data: Faster R-CNN R-50 built-in teacher (AKEs:
# frcnn_R50_absorb_builtin.py) -> Faster R-CNN R-18 built-in student, with the student
# baseline's schedule and optimiser (configs/baselines/faster_rcnn_R18_fpn_builtin.py). Same FPN
# levels (P2-P6, strides 4-64, width 128) on both sides. Adaptor FFN 512.
from detectron2.config import LazyCall as L

from d2kd.distill.unikd import FrozenAKE, UniKD
from d2kd.meta_arch import HeteroDistill

from ..baselines.faster_rcnn_R18_fpn_builtin import dataloader, lr_multiplier, model as student, optimizer, train
from .frcnn_R50_absorb_builtin import model as absorb, train as absorb_train

model = L(HeteroDistill)(
    student=student,
    teacher=absorb.teacher,
    losses={
        "unikd": L(UniKD)(
            ake=L(FrozenAKE)(ake=absorb.ake, weights=absorb_train.output_dir + "/model_final.pth"),
            student_channels=student.backbone.out_channels,
            name="unikd",
            lambda_ct=10.0,
            lambda_pos=10.0,
            adaptor_layers=2,
            adaptor_ffn_dim=512,
        ),
    },
    max_iter="${train.max_iter}",
)

train.output_dir = "./output/unikd_frcnn_R50_to_frcnn_R18_builtin"
