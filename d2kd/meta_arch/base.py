"""What DistillDETR and HeteroDistill have in common.

A distiller is a detectron2 meta-architecture made of

- ``student``: the model being trained (a registered sub-module: its parameters are the ones
  the optimizer and DDP see, and its weights are what evaluation and export use);
- ``teacher``: a :class:`~d2kd.meta_arch.teacher.FrozenTeacher`, held *unregistered*, so it is
  absent from ``parameters()``, ``state_dict()`` and DDP, yet follows ``.to(device)``;
- ``distill_losses``: the distillation methods (``d2kd.distill``), registered, so their
  adapters are trained and checkpointed with the student.

In eval mode the distiller *is* the student: ``forward`` returns the student's detections.
"""
from typing import Dict, Iterable, Mapping, Optional

import torch
from torch import nn

from .teacher import FrozenTeacher

STUDENT_PREFIX = "student."


class DistillerBase(nn.Module):
    """Base class of the distillation meta-architectures.

    Args:
        student: the student detector (detectron2 ``batched_inputs`` contract).
        teacher: the frozen teacher.
        losses: distillation methods by name (names become the ``distill_losses`` keys).
    """

    def __init__(
        self,
        *,
        student: nn.Module,
        teacher: FrozenTeacher,
        losses: Optional[Mapping[str, nn.Module]] = None,
    ):
        super().__init__()
        if not isinstance(teacher, FrozenTeacher):
            raise TypeError(
                f"teacher must be a d2kd.meta_arch.FrozenTeacher, got {type(teacher).__name__}"
                " (wrap the teacher model: L(FrozenTeacher)(model=..., weights=...))"
            )
        self.student = student
        object.__setattr__(self, "_teacher", teacher)  # unregistered on purpose (module doc)
        self.distill_losses = nn.ModuleDict(dict(losses or {}))

    @property
    def teacher(self) -> FrozenTeacher:
        return self._teacher

    @property
    def device(self) -> torch.device:
        return next(self.student.parameters()).device

    def _apply(self, fn, *args, **kwargs):
        # .to()/.cuda()/.float() reach registered modules only; the teacher must follow too.
        super()._apply(fn, *args, **kwargs)
        self._teacher._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self._teacher.train(False)
        return self

    def forward(self, batched_inputs):
        if not self.training:
            return self.student(batched_inputs)
        losses = self.forward_train(batched_inputs)
        for name, value in losses.items():
            if not name.startswith("loss"):
                raise KeyError(f"loss names must start with 'loss', got {name!r}")
        return losses

    def forward_train(self, batched_inputs) -> Dict[str, torch.Tensor]:
        """Detection losses of the student plus every ``loss_kd_*`` term (subclasses)."""
        raise NotImplementedError

    def active_losses(self) -> Iterable[nn.Module]:
        return self.distill_losses.values()

    def student_state_dict(self) -> Dict[str, torch.Tensor]:
        """The student's weights alone, with the keys of the plain student model."""
        return student_weights(self.state_dict())


def student_weights(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Extracts the student's weights from a distiller state dict (keys ``student.*``).

    Raises ValueError when the state dict holds no student, e.g. a plain detector's checkpoint.
    """
    out = {k[len(STUDENT_PREFIX):]: v for k, v in state.items() if k.startswith(STUDENT_PREFIX)}
    if not out:
        raise ValueError(
            "the checkpoint holds no 'student.*' weights: it was not written by a distillation run"
        )
    return out
