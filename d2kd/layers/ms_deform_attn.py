"""The multi-scale deformable attention module (Deformable DETR, Zhu et al. 2021, Eq. 3).

Each query predicts, for every head h, level l and point p, a sampling offset and an attention
weight; the output is the attention-weighted sum of bilinearly sampled values
(:func:`d2kd.ops.multi_scale_deformable_attention`, compiled kernel or reference).

Reference points are normalised to the *padded* feature maps (the decoder multiplies its boxes by
the valid ratios before calling) and are either points or boxes:

- points ``[B, Q, L, 2]`` (x, y): the sampling location is ``ref + offset / (W_l, H_l)``, i.e.
  offsets are in pixels of level l;
- boxes ``[B, Q, L, 4]`` (cx, cy, w, h): the location is ``ref_xy + offset / P * ref_wh / 2``,
  i.e. offsets are in units of the box half-size divided by the number of points.

Initialisation (the paper's): the offset projection has zero weights and a bias on a directional
grid, so *at init* head h, point p (0-based) samples at ``(p + 1) * d_h`` in those units at every
level, with ``d_h = (cos t_h, sin t_h) / max(|cos t_h|, |sin t_h|)``, ``t_h = 2 pi h / H``
(:meth:`MultiScaleDeformableAttention.initial_offsets`). For box references the outermost point
thus lies on the box border. Attention weights start uniform (zero weights and bias); the value
and output projections are Xavier-uniform with zero bias.
"""
import math
from typing import Optional

import torch
from torch import nn

from d2kd.ops import multi_scale_deformable_attention


class MultiScaleDeformableAttention(nn.Module):
    """Multi-scale deformable attention over flattened multi-level features.

    Args:
        embed_dim: channels of queries, values and output.
        num_heads: attention heads (``embed_dim`` must be divisible by it).
        num_levels: feature levels L.
        num_points: sampling points P per head and level.
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 4):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    @staticmethod
    def initial_offsets(num_heads: int, num_levels: int, num_points: int) -> torch.Tensor:
        """The offsets every query predicts at init: [H, L, P, 2], ``(p + 1) * d_h`` (module doc)."""
        angles = torch.arange(num_heads, dtype=torch.float64) * (2 * math.pi / num_heads)
        dirs = torch.stack([angles.cos(), angles.sin()], dim=-1)
        dirs = dirs / dirs.abs().max(dim=-1, keepdim=True).values
        steps = torch.arange(1, num_points + 1, dtype=torch.float64)
        grid = dirs[:, None, None, :] * steps[None, None, :, None]  # [H, 1, P, 2]
        return grid.expand(num_heads, num_levels, num_points, 2).float().contiguous()

    def reset_parameters(self):
        nn.init.zeros_(self.sampling_offsets.weight)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(
                self.initial_offsets(self.num_heads, self.num_levels, self.num_points).flatten()
            )
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def sampling_locations(self, query: torch.Tensor, reference_points: torch.Tensor,
                           spatial_shapes: torch.Tensor) -> torch.Tensor:
        """Where each head samples: [B, Q, H, L, P, 2], normalised (x, y) per level.

        Args:
            query: [B, Q, C].
            reference_points: [B, Q, L, 2] points or [B, Q, L, 4] boxes (module doc).
            spatial_shapes: [L, 2] int64 (H_l, W_l).
        """
        B, Q, _ = query.shape
        H, L, P = self.num_heads, self.num_levels, self.num_points
        offsets = self.sampling_offsets(query).view(B, Q, H, L, P, 2)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level; (W_l, H_l) turns them into map fractions
            normalizer = spatial_shapes.flip(-1).to(offsets.dtype)  # [L, 2] as (W, H)
            return reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        if reference_points.shape[-1] == 4:
            centre = reference_points[:, :, None, :, None, :2]
            half_size = reference_points[:, :, None, :, None, 2:] * 0.5
            return centre + offsets / P * half_size
        raise ValueError(f"reference_points must end in 2 or 4 coordinates, got {tuple(reference_points.shape)}")

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        value_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Attends from each query to the multi-level ``value`` map.

        Args:
            query: [B, Q, C], content plus positional embedding.
            reference_points: [B, Q, L, 2] or [B, Q, L, 4], normalised to the padded maps.
            value: [B, S, C] flattened levels (``S = sum_l H_l W_l``).
            spatial_shapes: [L, 2] int64 (H_l, W_l).
            level_start_index: [L] int64, start of each level in S.
            value_padding_mask: [B, S] bool, True on padding (those values are zeroed).

        Returns:
            [B, Q, C].
        """
        B, Q, _ = query.shape
        S = value.shape[1]
        H, L, P = self.num_heads, self.num_levels, self.num_points
        if spatial_shapes.shape[0] != L:
            raise ValueError(f"module built for {L} levels, got {spatial_shapes.shape[0]}")
        v = self.value_proj(value)
        if value_padding_mask is not None:
            v = v.masked_fill(value_padding_mask[..., None], 0.0)
        v = v.view(B, S, H, self.embed_dim // H)
        locations = self.sampling_locations(query, reference_points, spatial_shapes)
        weights = self.attention_weights(query).view(B, Q, H, L * P).softmax(-1).view(B, Q, H, L, P)
        out = multi_scale_deformable_attention(v, spatial_shapes, level_start_index, locations, weights)
        return self.output_proj(out)
