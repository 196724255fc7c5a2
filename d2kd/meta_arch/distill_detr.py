"""DistillDETR: homogeneous distillation, a d2kd DETR teacher into a d2kd DETR student."""
from typing import Mapping, Optional

from detectron2.modeling import META_ARCH_REGISTRY

from d2kd.detr.base import DETRBase
from d2kd.distill.base import DistillLoss

from .base import DistillerBase
from .teacher import FrozenTeacher


@META_ARCH_REGISTRY.register()
class DistillDETR(DistillerBase):
    """A frozen DETR teacher (DINO, Deformable DETR) distilled into a DETR student.

    Teacher and student may differ in backbone, width, number of queries, feature levels and
    decoder layers; the methods (KD-DETR, DETRDistill, FitNet, ...) bridge the differences with
    their own adapters. The training step is :meth:`DistillerBase.forward_train`; evaluation and
    export use the student alone.

    Args:
        student: the DETR being trained.
        teacher: the frozen DETR teacher.
        losses: distillation methods by name, combined freely (e.g. KD-DETR + DETRDistill's
            feature loss).
        max_iter: schedule length, for methods that change over training.
    """

    def __init__(
        self,
        *,
        student: DETRBase,
        teacher: FrozenTeacher,
        losses: Optional[Mapping[str, DistillLoss]] = None,
        max_iter: int = 0,
    ):
        super().__init__(student=student, teacher=teacher, losses=losses, max_iter=max_iter)
        if self.teacher_family != "detr" or self.student_family != "detr":
            raise TypeError(
                "DistillDETR distills a d2kd DETR into a d2kd DETR, got a "
                f"{type(teacher.model).__name__} teacher and a {type(student).__name__} student; "
                "use HeteroDistill for other pairs"
            )
