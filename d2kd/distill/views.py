"""One forward pass of any supported detector, as the distillation methods see it.

The meta-architectures run teacher and student through :func:`run_detector`, which returns
the model's own training losses (student) and a :class:`DetectorView`: multi-scale features
with their strides, the same for every family, plus what is particular to the family:

- ``"detr"`` (d2kd's DeformableDETR, DINO): the :class:`~d2kd.detr.queries.DETRRecord`;
  ``features`` are the encoder output per level (UniKD's choice for Deformable DETR),
  ``record.enc.features`` the encoder input.
- ``"rcnn"`` (detectron2's GeneralizedRCNN, e.g. Faster R-CNN): the FPN features by name;
  :func:`rcnn_predict_at` runs the box head on arbitrary boxes.
- ``"dense"`` (detectron2's RetinaNet, FCOS): the head's raw predictions per level.

Running a model through here gives exactly its own ``forward`` losses (tested), so distillation
never changes how the student is supervised.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.meta_arch.rcnn import GeneralizedRCNN
from detectron2.structures import Boxes, ImageList
from torch import nn

from d2kd.detr.base import DETRBase, ExtraGroups
from d2kd.detr.queries import DETRRecord

FAMILIES = ("detr", "rcnn", "dense")


def model_family(model: nn.Module) -> str:
    """``"detr"``, ``"rcnn"``, ``"dense"``, or ``"other"`` for a model this module cannot run
    (only a custom method that overrides the whole step could distill it)."""
    if isinstance(model, DETRBase):
        return "detr"
    if isinstance(model, GeneralizedRCNN):
        return "rcnn"
    if isinstance(model, DenseDetector):
        return "dense"
    return "other"


@dataclass
class DetectorView:
    """A detector's forward pass, family-independent where possible.

    Attributes:
        family: ``"detr"``, ``"rcnn"`` or ``"dense"``.
        model: the detector that produced the view.
        images: its preprocessed input (``ImageList``; ``image_sizes`` are unpadded sizes).
        features: multi-scale maps, finest first, [B, C, H_l, W_l].
        strides: input pixels per feature cell of each level.
        record: the DETRRecord (``"detr"`` only).
        extras: family-specific outputs: ``"rcnn"``: ``{"features": {name: map}}``;
            ``"dense"``: ``{"predictions": head outputs per level}``.
    """

    family: str
    model: nn.Module
    images: ImageList
    features: List[torch.Tensor]
    strides: List[int]
    record: Optional[DETRRecord] = None
    extras: Dict[str, Any] = field(default_factory=dict)


def _gt_instances(model: nn.Module, batched_inputs) -> Optional[list]:
    if "instances" not in batched_inputs[0]:
        return None
    return [x["instances"].to(model.device) for x in batched_inputs]


def run_detector(
    model: nn.Module,
    batched_inputs: Sequence[dict],
    *,
    with_losses: bool,
    extra_groups: Optional[ExtraGroups] = None,
) -> Tuple[Dict[str, torch.Tensor], DetectorView]:
    """Runs ``model`` on ``batched_inputs`` and returns ``(its losses, its view)``.

    Args:
        with_losses: compute the model's own training losses (the student); otherwise the losses
            dict is empty and no ground truth is needed (the teacher).
        extra_groups: extra decoder query groups for a DETR (ignored by other families).
    """
    family = model_family(model)
    if family == "other":
        raise TypeError(
            f"{type(model).__name__} is not a supported detector for distillation: expected a d2kd "
            "DETR (DeformableDETR, DINO), a detectron2 GeneralizedRCNN, RetinaNet or FCOS"
        )
    if family == "detr":
        return _run_detr(model, batched_inputs, with_losses, extra_groups)
    if family == "rcnn":
        return _run_rcnn(model, batched_inputs, with_losses)
    return _run_dense(model, batched_inputs, with_losses)


def _run_detr(model: DETRBase, batched_inputs, with_losses, extra_groups):
    images = model.preprocess_image(batched_inputs)
    targets = model.prepare_targets(batched_inputs) if with_losses else None
    record = model.run(images, targets, extra_groups=extra_groups)
    losses = model.compute_losses(record, targets) if with_losses else {}
    view = DetectorView("detr", model, images, record.enc.memory_levels(), list(model.backbone.strides),
                        record=record)
    return losses, view


def _run_rcnn(model: GeneralizedRCNN, batched_inputs, with_losses):
    images = model.preprocess_image(batched_inputs)
    features = model.backbone(images.tensor)
    losses = {}
    if with_losses:
        gt = _gt_instances(model, batched_inputs)
        proposals, proposal_losses = model.proposal_generator(images, features, gt)
        _, detector_losses = model.roi_heads(images, features, proposals, gt)
        losses = {**detector_losses, **proposal_losses}
    names, strides = _fpn_levels(model.backbone)
    view = DetectorView("rcnn", model, images, [features[n] for n in names], strides,
                        extras={"features": features})
    return losses, view


def _run_dense(model: DenseDetector, batched_inputs, with_losses):
    images = model.preprocess_image(batched_inputs)
    all_features = model.backbone(images.tensor)
    features = [all_features[f] for f in model.head_in_features]
    predictions = model.head(features)
    losses = {}
    if with_losses:
        gt = _gt_instances(model, batched_inputs)
        losses = model.forward_training(images, features, predictions, gt)
    shapes = model.backbone.output_shape()
    view = DetectorView("dense", model, images, features, [shapes[f].stride for f in model.head_in_features],
                        extras={"predictions": predictions})
    return losses, view


def _fpn_levels(backbone) -> Tuple[List[str], List[int]]:
    shapes = backbone.output_shape()
    names = sorted(shapes, key=lambda n: shapes[n].stride)
    return names, [shapes[n].stride for n in names]


def rcnn_predict_at(view: DetectorView, boxes: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Runs a Faster R-CNN's box head on given boxes, outside its proposal sampling and losses.

    Args:
        view: an ``"rcnn"`` view.
        boxes: per image [R_b, 4] absolute xyxy boxes in the network input's pixels.

    Returns:
        ``(logits [R, K + 1], boxes [R, K', 4])``: class logits (softmax convention, background
        last, as detectron2) and the decoded box of each class (K' = K, or 1 when the
        regression is class-agnostic), R = sum R_b, images in order.
    """
    if view.family != "rcnn":
        raise TypeError(f"rcnn_predict_at needs an rcnn view, got {view.family!r}")
    heads = view.model.roi_heads
    feats = [view.extras["features"][f] for f in heads.box_in_features]
    pooled = heads.box_pooler(feats, [Boxes(b) for b in boxes])
    logits, deltas = heads.box_predictor(heads.box_head(pooled))
    flat = torch.cat(list(boxes), dim=0)
    decoded = heads.box_predictor.box2box_transform.apply_deltas(deltas, flat)
    return logits, decoded.view(flat.shape[0], -1, 4)


def group_hook(losses: Sequence[nn.Module], step, role: str) -> Callable:
    """The ``extra_groups`` callable collecting every method's groups for ``role``."""

    def extra(enc, det):
        groups = []
        for loss in losses:
            hook = loss.teacher_groups if role == "teacher" else loss.student_groups
            groups.extend(hook(step, enc, det))
        return groups

    return extra
