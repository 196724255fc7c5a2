"""The multi-scale backbone of the DETR models: a detectron2 backbone and a channel mapper.

:class:`ChannelMapper` wraps any detectron2 ``Backbone`` (as detectron2's FPN wraps its
``bottom_up``): it projects the chosen outputs to the transformer width (1x1 conv + GroupNorm)
and appends extra levels by stride-2 3x3 convolutions (the first one on the last backbone
feature, later ones on the previous extra level), as in Deformable DETR. Its output is the list of
encoder input levels, finest first.
"""
from typing import List, Sequence

import torch
from detectron2.modeling.backbone import Backbone
from torch import nn


class ChannelMapper(nn.Module):
    """Backbone features projected to one width, plus extra coarser levels.

    Args:
        bottom_up: a detectron2 backbone (its ``output_shape()`` gives the input channels).
        in_features: backbone outputs to use, finest first (e.g. res3, res4, res5).
        out_channels: the transformer width.
        num_outs: total levels; ``num_outs - len(in_features)`` extra stride-2 levels are added.
        num_groups: GroupNorm groups (capped by ``out_channels``); 0: no normalisation (DAB-DETR's
            plain 1x1 input projection).
    """

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: Sequence[str] = ("res3", "res4", "res5"),
        out_channels: int = 256,
        num_outs: int = 4,
        num_groups: int = 32,
    ):
        super().__init__()
        if num_outs < len(in_features):
            raise ValueError(f"num_outs={num_outs} is smaller than the {len(in_features)} in_features")
        shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ValueError(f"backbone has no outputs {missing}; it has {sorted(shapes)}")
        self.bottom_up = bottom_up
        self.in_features = list(in_features)
        self.out_channels = out_channels
        groups = min(num_groups, out_channels)

        def project(c_in, kernel, stride):
            return nn.Sequential(
                nn.Conv2d(c_in, out_channels, kernel, stride=stride, padding=kernel // 2),
                nn.GroupNorm(groups, out_channels) if groups > 0 else nn.Identity(),
            )

        self.input_projs = nn.ModuleList(project(shapes[f].channels, 1, 1) for f in self.in_features)
        extra_in = [shapes[self.in_features[-1]].channels] + [out_channels] * (num_outs - len(in_features) - 1)
        self.extra_projs = nn.ModuleList(project(c, 3, 2) for c in extra_in[: num_outs - len(in_features)])
        last_stride = shapes[self.in_features[-1]].stride
        self.strides = [shapes[f].stride for f in self.in_features] + [
            last_stride * 2 ** (i + 1) for i in range(len(self.extra_projs))
        ]
        for proj in list(self.input_projs) + list(self.extra_projs):
            nn.init.xavier_uniform_(proj[0].weight)
            nn.init.zeros_(proj[0].bias)

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """x: [B, 3, H, W] normalised images -> list of [B, out_channels, H_l, W_l], finest first."""
        feats = self.bottom_up(x)
        outs = [proj(feats[f]) for proj, f in zip(self.input_projs, self.in_features)]
        previous = feats[self.in_features[-1]]
        for proj in self.extra_projs:
            previous = proj(previous)
            outs.append(previous)
        return outs
