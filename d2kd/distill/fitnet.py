"""FitNet (Romero et al., 2015): the student's features mimic the teacher's through an adapter.

The baseline both DETRDistill (Tab. 1, 3) and UniKD (Tab. 2) compare against:

    L_fitnet = w * mean_l  ||F^T_l - phi_l(F^S_l)||^2 / (d * |valid cells of level l|)

with phi_l a 1x1 convolution from the student's width to the teacher's (DETRDistill Eq. 5 with
the mask psi = 1, summed over channels and averaged over cells and levels). Padded cells are
excluded. Levels are paired by stride (:mod:`d2kd.distill.levels`).

Which features: ``"features"`` is the view's pyramid — a DETR's encoder output, a detectron2
detector's FPN; ``"encoder_input"`` is a DETR's encoder input (backbone + channel mapper).
"""
from typing import Dict, Sequence

import torch
from torch import nn

from .base import DistillLoss, DistillStep
from .levels import pair_levels, resize_like, valid_mask

SOURCES = ("features", "encoder_input")


def _pyramid(view, source: str):
    if source == "features":
        return view.features
    if view.record is None:
        raise ValueError(f"FitNet source 'encoder_input' needs a DETR, got a {view.family} model")
    return view.record.enc.features


class FitNet(DistillLoss):
    """Feature mimicking with a learnable 1x1-conv adapter per level.

    Args:
        student_channels: width of the student's features (the same on every level).
        teacher_channels: width of the teacher's features.
        num_levels: number of paired levels (adapters are built for this many).
        weight: loss weight w.
        source: ``"features"`` or ``"encoder_input"`` (see module docstring).
    """

    def __init__(
        self,
        *,
        student_channels: int,
        teacher_channels: int,
        num_levels: int,
        weight: float = 1.0,
        source: str = "features",
    ):
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"FitNet source must be one of {SOURCES}, got {source!r}")
        self.adapters = nn.ModuleList(nn.Conv2d(student_channels, teacher_channels, 1) for _ in range(num_levels))
        self.weight = weight
        self.source = source

    def forward(self, step: DistillStep) -> Dict[str, torch.Tensor]:
        t_feats = _pyramid(step.teacher, self.source)
        s_feats = _pyramid(step.student, self.source)
        pairs = pair_levels(step.teacher.strides, step.student.strides)
        if len(pairs) != len(self.adapters):
            raise ValueError(
                f"FitNet has {len(self.adapters)} adapters but teacher strides {step.teacher.strides} and "
                f"student strides {step.student.strides} pair {len(pairs)} levels; set num_levels={len(pairs)}"
            )
        total = t_feats[0].new_zeros(())
        for adapter, (ti, si) in zip(self.adapters, pairs):
            target = t_feats[ti].detach()
            pred = resize_like(adapter(s_feats[si]), target)
            mask = valid_mask(step.teacher.images.image_sizes, step.teacher.strides[ti], target.shape[-2:],
                              target.device)
            sq = ((pred - target) ** 2 * mask).sum()
            total = total + sq / (mask.sum().clamp(min=1) * target.shape[1])
        return {"loss_kd_fitnet": self.weight * total / len(pairs)}
