# UniKD stage 2 (injecting, Eq. 7-8) as one call, shared by the configs/unikd/*_to_*.py files.
from detectron2.config import LazyCall as L

from d2kd.distill.unikd import FrozenAKE, UniKD
from d2kd.meta_arch import HeteroDistill


def unikd_stage2(student, absorb, absorb_train, student_channels, adaptor_ffn_dim=1024):
    """HeteroDistill of ``student`` with UniKD, from a stage-1 config's ``model`` (``absorb``: its
    frozen teacher and AKE definition) and ``train`` (the AKE weights are its model_final.pth).
    lambda_1 = lambda_2 = 10 and two deformable self-attention layers in the adaptor (Sec. 4.1);
    ``student_channels``: width of the student features the adaptor reads."""
    return L(HeteroDistill)(
        student=student,
        teacher=absorb.teacher,
        losses={
            "unikd": L(UniKD)(
                ake=L(FrozenAKE)(ake=absorb.ake, weights=absorb_train.output_dir + "/model_final.pth"),
                student_channels=student_channels,
                name="unikd",
                lambda_ct=10.0,
                lambda_pos=10.0,
                adaptor_layers=2,
                adaptor_ffn_dim=adaptor_ffn_dim,
            ),
        },
        max_iter="${train.max_iter}",
    )
