"""HeteroDistill: any supported teacher into any supported student."""
from typing import Mapping, Optional

from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from d2kd.distill.base import DistillLoss

from .base import DistillerBase
from .teacher import FrozenTeacher


@META_ARCH_REGISTRY.register()
class HeteroDistill(DistillerBase):
    """A frozen teacher and a student of possibly different families.

    Teachers and students: d2kd's DINO / Deformable DETR, detectron2's Faster R-CNN
    (GeneralizedRCNN), RetinaNet and FCOS. Each method states which families it supports
    (e.g. KD-DETR's heterogeneous mode needs a DETR teacher; UniKD works for every pair) and the
    distiller refuses an unsupported combination when it is built. Same teacher rules, training
    step, evaluation and export as :class:`~d2kd.meta_arch.DistillDETR`.

    Args:
        student: the detector being trained.
        teacher: the frozen teacher.
        losses: distillation methods by name.
        max_iter: schedule length, for methods that change over training.
    """

    def __init__(
        self,
        *,
        student: nn.Module,
        teacher: FrozenTeacher,
        losses: Optional[Mapping[str, DistillLoss]] = None,
        max_iter: int = 0,
    ):
        super().__init__(student=student, teacher=teacher, losses=losses, max_iter=max_iter)
        for role, family, model in (("teacher", self.teacher_family, teacher.model),
                                    ("student", self.student_family, student)):
            if family == "other":
                raise TypeError(
                    f"HeteroDistill cannot run a {type(model).__name__} {role}: supported are d2kd "
                    "DINO / DeformableDETR and detectron2 GeneralizedRCNN, RetinaNet, FCOS"
                )
