"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021, Eq. 2-3).

Public entry point: :func:`multi_scale_deformable_attention`. It runs the compiled kernel of
``d2kd._C`` for the input's device when there is one, else the pure-PyTorch reference
:func:`multi_scale_deformable_attention_reference`, which is also the oracle of the tests.

Shapes (B batch, S = sum_l H_l*W_l value tokens, Q queries, H heads, C channels per head,
L levels, P points per level and head):

- ``value``: [B, S, H, C]
- ``spatial_shapes``: [L, 2] int64, (H_l, W_l) of each level
- ``level_start_index``: [L] int64, offset of level l in the S axis
- ``sampling_locations``: [B, Q, H, L, P, 2], (x, y) normalised to [0, 1] per level
- ``attention_weights``: [B, Q, H, L, P]
- output: [B, Q, H * C]

Sampling is bilinear with zero padding outside the map, at pixel centres
(``grid_sample(..., padding_mode="zeros", align_corners=False)``).
"""
import torch
import torch.nn.functional as F


def multi_scale_deformable_attention_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Pure-PyTorch reference (``grid_sample`` per level). Shapes as in the module docstring."""
    B, S, H, C = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    value_levels = value.split(sizes, dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        # [B, H_l*W_l, H, C] -> [B*H, C, H_l, W_l]
        v = value_levels[lvl].flatten(2).transpose(1, 2).reshape(B * H, C, int(h), int(w))
        # [B, Q, H, P, 2] -> [B*H, Q, P, 2]
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [B*H, C, Q, L, P] weighted by [B*H, 1, Q, L, P]
    stacked = torch.stack(sampled, dim=-2)
    weights = attention_weights.transpose(1, 2).reshape(B * H, 1, Q, L, P)
    out = (stacked * weights).flatten(-2).sum(-1)  # [B*H, C, Q]
    return out.view(B, H * C, Q).transpose(1, 2).contiguous()


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention; compiled kernel when available, else the reference.

    Shapes as in the module docstring. Differentiable w.r.t. ``value``, ``sampling_locations``
    and ``attention_weights``.
    """
    # Placeholder until the compiled kernels land: the reference is exact, only slower.
    return multi_scale_deformable_attention_reference(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
