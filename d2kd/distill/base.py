"""The interface every distillation method implements.

A method is one :class:`DistillLoss` subclass in one file of this folder. The meta-architecture
(:mod:`d2kd.meta_arch`) calls it at three points of a training step:

1. teacher pass: ``teacher_groups(step, enc, det)`` may add query groups to a DETR teacher's
   decoder pass (KD-DETR's distillation points);
2. student pass: ``student_groups(step, enc, det)`` likewise for a DETR student (KD-DETR's
   points again, DETRDistill's teacher-query group);
3. after both: ``forward(step)`` returns the method's weighted loss terms, every key starting
   with ``loss_kd_`` (each is logged on its own by detectron2's trainer).

Offline distillation (``d2kd.offline``): a method that supports it sets ``supports_offline`` and
implements ``export_knowledge(step)``, the per-image tensors to store, computed from a teacher-only
step. When training from a store there is no teacher pass: ``step.teacher`` is None,
``step.knowledge`` holds the stored tensors of each image (for the exact transform of the image),
and ``teacher_groups`` is not called; ``forward`` must then give the same loss as online.

``step.teacher`` / ``step.student`` are :class:`~d2kd.distill.views.DetectorView` objects:
multi-scale features with their strides for every family, plus the :class:`DETRRecord` of a
DETR or the raw outputs of a detectron2 detector. ``step.cache`` is where a method keeps what its
hooks share within the step (e.g. the points it sampled for both models).
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from d2kd.detr.queries import EncoderState, QueryGroup


@dataclass
class DistillStep:
    """One training step as the distillation methods see it.

    Attributes:
        batched_inputs: the detectron2 inputs of the step.
        targets: per image ``{"labels": [M] int64, "boxes": [M, 4]}``, boxes as normalised cxcywh
            of the unpadded network input (the same for teacher and student).
        iteration: the trainer's iteration (0 outside a trainer).
        max_iter: the schedule's length, for methods whose behaviour changes over training.
        teacher: the teacher's view, set after the teacher pass.
        student: the student's view, set after the student pass.
        cache: per-step scratch space shared by a method's hooks (key it by the method's name).
        knowledge: offline training only: per image, ``{method name: {key: tensor}}`` read from
            the knowledge store (None when the teacher runs online).
    """

    batched_inputs: List[dict]
    targets: List[Dict[str, torch.Tensor]]
    iteration: int = 0
    max_iter: int = 0
    teacher: Any = None
    student: Any = None
    cache: Dict[str, Any] = field(default_factory=dict)
    knowledge: Optional[List[Dict[str, Dict[str, torch.Tensor]]]] = None

    @property
    def progress(self) -> float:
        """Fraction of the schedule done, in [0, 1]; 0 when ``max_iter`` is unknown."""
        if self.max_iter <= 0:
            return 0.0
        return min(1.0, max(0.0, self.iteration / self.max_iter))


class DistillLoss(nn.Module):
    """Base class of a distillation method; owns its learnable adapters, if any.

    Class attributes a method may set:
        needs_teacher_matching: the meta-architecture computes the DETR teacher's last-layer
            Hungarian matching to the ground truth (``step.teacher.record.matching``).
        student_families / teacher_families: the model families (``"detr"``, ``"rcnn"``,
            ``"dense"``) the method supports; checked when the distiller is built.
        supports_offline: the method implements ``export_knowledge`` and can train from a store.
    """

    needs_teacher_matching: bool = False
    supports_offline: bool = False
    teacher_families: Sequence[str] = ("detr", "rcnn", "dense")
    student_families: Sequence[str] = ("detr", "rcnn", "dense")

    def teacher_groups(self, step: DistillStep, enc: EncoderState, det: QueryGroup) -> List[QueryGroup]:
        """Extra query groups for a DETR teacher's decoder pass (default: none)."""
        return []

    def student_groups(self, step: DistillStep, enc: EncoderState, det: QueryGroup) -> List[QueryGroup]:
        """Extra query groups for a DETR student's decoder pass (default: none)."""
        return []

    def forward(self, step: DistillStep) -> Dict[str, torch.Tensor]:
        """The method's weighted loss terms, keys ``loss_kd_*``."""
        raise NotImplementedError

    def export_knowledge(self, step: DistillStep) -> List[Dict[str, torch.Tensor]]:
        """Per image, the tensors an offline store keeps for this method (teacher-only step:
        ``step.teacher`` is set, ``step.student`` is None)."""
        raise NotImplementedError(f"{type(self).__name__} does not support offline distillation")
