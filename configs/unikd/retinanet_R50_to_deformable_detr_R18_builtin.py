# UniKD stage 2 on the built-in shapes data, the CPU twin of
# retinanet_R50_to_deformable_detr_R18.py: RetinaNet R-50 built-in teacher (AKEs:
# retinanet_R50_absorb_builtin.py) -> Deformable DETR R-18 built-in student, with the student
# baseline's schedule and optimiser (configs/detr/deformable_detr_R18_builtin.py). The AKEs read
# the student's encoder output (width 128, strides 8-64; the teacher's P7 is max-pooled from the
# stride-64 level). Adaptor FFN 512.
from detectron2.config import LazyCall as L

from d2kd.distill.unikd import FrozenAKE, UniKD
from d2kd.meta_arch import HeteroDistill

from ..detr.deformable_detr_R18_builtin import dataloader, lr_multiplier, model as student, optimizer, train
from .retinanet_R50_absorb_builtin import model as absorb, train as absorb_train

model = L(HeteroDistill)(
    student=student,
    teacher=absorb.teacher,
    losses={
        "unikd": L(UniKD)(
            ake=L(FrozenAKE)(ake=absorb.ake, weights=absorb_train.output_dir + "/model_final.pth"),
            student_channels=student.embed_dim,
            name="unikd",
            lambda_ct=10.0,
            lambda_pos=10.0,
            adaptor_layers=2,
            adaptor_ffn_dim=512,
        ),
    },
    max_iter="${train.max_iter}",
)

train.output_dir = "./output/unikd_retinanet_R50_to_deformable_detr_R18_builtin"
