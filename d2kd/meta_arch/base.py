"""What DistillDETR and HeteroDistill have in common.

A distiller is a detectron2 meta-architecture made of

- ``student``: the model being trained (a registered sub-module: its parameters are the ones
  the optimizer and DDP see, and its weights are what evaluation and export use);
- ``teacher``: a :class:`~d2kd.meta_arch.teacher.FrozenTeacher`, held *unregistered*, so it is
  absent from ``parameters()``, ``state_dict()`` and DDP, yet follows ``.to(device)``;
- ``distill_losses``: the distillation methods (``d2kd.distill``), registered, so their
  adapters are trained and checkpointed with the student.

A training step (:meth:`DistillerBase.forward_train`, the same for both meta-architectures):

1. the teacher runs under ``no_grad`` through :func:`~d2kd.distill.views.run_detector`,
   decoding the methods' ``teacher_groups`` if it is a DETR, and is matched to the ground truth
   when a method asks for it;
2. the student runs the same way with its own training losses and the ``student_groups``;
3. every method's ``forward(step)`` adds its ``loss_kd_*`` terms.

Offline distillation: the teacher is a :class:`KnowledgeSource` (the interface this module
owns; :class:`d2kd.offline.OfflineTeacher` implements it: a description checked against a
knowledge store, never built); step 1 is replaced by ``teacher.knowledge(...)`` (``step.teacher``
stays None) and every method must support offline distillation. The meta-architectures never
import :mod:`d2kd.offline`; it imports them.

In eval mode the distiller *is* the student: ``forward`` returns the student's detections.
"""
from typing import Dict, Iterable, List, Mapping, Optional

import torch
from detectron2.utils.events import get_event_storage
from torch import nn

from d2kd.distill.base import DistillLoss, DistillStep

from .teacher import FrozenTeacher, TeacherHolder
from d2kd.distill.views import group_hook, model_family, run_detector

STUDENT_PREFIX = "student."


class KnowledgeSource(nn.Module):
    """A teacher whose knowledge is read, not computed: what a distiller needs of it.

    Implemented by :class:`d2kd.offline.OfflineTeacher`. Attributes: ``family`` (``"detr"``,
    ``"rcnn"``, ``"dense"``: checked against each method's ``teacher_families``) and
    ``num_classes`` (None: unknown).
    """

    family: str = "other"
    num_classes: Optional[int] = None

    def knowledge(self, step: DistillStep, losses: Mapping[str, DistillLoss],
                  device) -> List[Dict[str, Dict[str, torch.Tensor]]]:
        """Per image of ``step``, ``{method name: {key: tensor}}`` on ``device`` for every method of
        ``losses`` (what ``step.knowledge`` holds)."""
        raise NotImplementedError


class DistillerBase(TeacherHolder):
    """Base class of the distillation meta-architectures.

    Args:
        student: the student detector (detectron2 ``batched_inputs`` contract).
        teacher: the :class:`FrozenTeacher`, or a :class:`KnowledgeSource` (offline: knowledge read
            from a store).
        losses: distillation methods by name (names become the ``distill_losses`` keys).
        max_iter: length of the training schedule (``"${train.max_iter}"`` in configs), for
            methods whose behaviour changes over training.
    """

    def __init__(
        self,
        *,
        student: nn.Module,
        teacher,
        losses: Optional[Mapping[str, DistillLoss]] = None,
        max_iter: int = 0,
    ):
        super().__init__()
        if not isinstance(teacher, (FrozenTeacher, KnowledgeSource)):
            raise TypeError(
                f"teacher must be a d2kd.meta_arch.FrozenTeacher (or, offline, a d2kd.offline."
                f"OfflineTeacher), got {type(teacher).__name__}"
                " (wrap the teacher model: L(FrozenTeacher)(model=..., weights=...))"
            )
        offline = isinstance(teacher, KnowledgeSource)
        self.student = student
        self.hold_teacher(teacher)  # unregistered on purpose (module doc)
        # detectron2's instantiate() leaves a plain dict of LazyCalls (``losses={...}`` in a
        # config) uninstantiated: build its entries here.
        self.distill_losses = nn.ModuleDict({k: _instantiate(v) for k, v in dict(losses or {}).items()})
        self.max_iter = max_iter
        self.teacher_family = teacher.family if offline else model_family(teacher.model)
        self.student_family = model_family(student)
        for name, loss in self.distill_losses.items():
            if not isinstance(loss, DistillLoss):
                raise TypeError(f"distillation loss {name!r} is a {type(loss).__name__}, not a DistillLoss")
            if self.teacher_family not in loss.teacher_families:
                raise ValueError(f"{name} ({type(loss).__name__}) does not support a "
                                 f"{self.teacher_family} teacher (supports {list(loss.teacher_families)})")
            if self.student_family not in loss.student_families:
                raise ValueError(f"{name} ({type(loss).__name__}) does not support a "
                                 f"{self.student_family} student (supports {list(loss.student_families)})")
        if offline:
            unsupported = [n for n, m in self.distill_losses.items() if not m.supports_offline]
            if unsupported:
                raise ValueError(f"{', '.join(unsupported)} cannot train from a knowledge store "
                                 "(supports_offline is False): train online, or drop them")
        num_t = teacher.num_classes if offline else _num_classes(teacher.model)
        num_s = _num_classes(student)
        if num_t is not None and num_s is not None and num_t != num_s:
            raise ValueError(f"teacher and student class counts differ: teacher has {num_t} classes, "
                             f"student has {num_s}; both must be trained on the same categories")

    @property
    def offline(self) -> bool:
        """Whether the teacher's knowledge is read from a store instead of computed."""
        return isinstance(self._teacher, KnowledgeSource)

    @property
    def device(self) -> torch.device:
        return next(self.student.parameters()).device

    def forward(self, batched_inputs):
        if not self.training:
            return self.student(batched_inputs)
        losses = self.forward_train(batched_inputs)
        for name, value in losses.items():
            if not name.startswith("loss"):
                raise KeyError(f"loss names must start with 'loss', got {name!r}")
        return losses

    def forward_train(self, batched_inputs) -> Dict[str, torch.Tensor]:
        """Detection losses of the student plus every method's ``loss_kd_*`` terms."""
        methods = list(self.distill_losses.values())
        step = DistillStep(
            batched_inputs=batched_inputs,
            targets=normalized_targets(batched_inputs, self.device),
            iteration=_current_iteration(),
            max_iter=self.max_iter,
        )
        if self.offline:
            step.knowledge = self.teacher.knowledge(step, self.distill_losses, self.device)
        else:
            run_teacher(self.teacher, methods, step)
        losses, step.student = run_detector(self.student, batched_inputs, with_losses=True,
                                            extra_groups=group_hook(methods, step, "student"))
        for name, method in self.distill_losses.items():
            terms = method(step)
            for key in terms:
                if not key.startswith("loss_kd_"):
                    raise KeyError(f"{name} returned {key!r}: distillation terms must start with 'loss_kd_'")
                if key in losses:
                    raise KeyError(f"{name} returned {key!r}, which another loss already produced")
            losses.update(terms)
        return losses

    def active_losses(self) -> Iterable[nn.Module]:
        return self.distill_losses.values()

    def student_state_dict(self) -> Dict[str, torch.Tensor]:
        """The student's weights alone, with the keys of the plain student model."""
        return student_weights(self.state_dict())


def run_teacher(teacher: FrozenTeacher, methods: Iterable[DistillLoss], step: DistillStep) -> DistillStep:
    """The teacher pass of a step (also the whole of an offline dump's step): sets
    ``step.teacher``, decoding the methods' ``teacher_groups``, and matches a DETR teacher to the
    ground truth when a method needs it."""
    methods = list(methods)
    with teacher.autocast() as model:
        _, step.teacher = run_detector(model, teacher.prepare_inputs(step.batched_inputs), with_losses=False,
                                       extra_groups=group_hook(methods, step, "teacher"))
        if step.teacher.record is not None and any(m.needs_teacher_matching for m in methods):
            model.match(step.teacher.record, step.targets)
    return step


def normalized_targets(batched_inputs, device) -> List[Dict[str, torch.Tensor]]:
    """Per image ``{"labels": [M], "boxes": [M, 4]}``: cxcywh normalised by the unpadded input."""
    from d2kd.layers import box_xyxy_to_cxcywh

    targets = []
    for x in batched_inputs:
        inst = x["instances"].to(device)
        h, w = inst.image_size
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=device)
        targets.append({"labels": inst.gt_classes.long(),
                        "boxes": box_xyxy_to_cxcywh(inst.gt_boxes.tensor.float() / scale)})
    return targets


def _instantiate(obj):
    """A config node with ``_target_`` (a LazyCall left inside a plain dict) -> the object."""
    if isinstance(obj, Mapping) and "_target_" in obj:
        from detectron2.config import instantiate

        return instantiate(obj)
    return obj


def _current_iteration() -> int:
    try:
        return get_event_storage().iter
    except AssertionError:  # no trainer around (tests, notebooks)
        return 0


def _num_classes(model: nn.Module) -> Optional[int]:
    """The class count of a d2kd DETR or detectron2 detector, None if it cannot be read."""
    if hasattr(model, "num_classes"):
        return int(model.num_classes)
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None and hasattr(roi_heads, "num_classes"):
        return int(roi_heads.num_classes)
    return None


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
