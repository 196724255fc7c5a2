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

The compiled kernels are the dispatcher ops ``torch.ops.d2kd.ms_deform_attn_forward`` and
``torch.ops.d2kd.ms_deform_attn_backward`` (csrc/ms_deform_attn/: CPU, CUDA and Meta kernels);
autograd over them is :class:`_MSDeformAttnFunction`. They take value in float32 / float64
(CUDA also float16 / bfloat16) and the locations and weights in float32 (float64 with a float64
value); the wrapper below converts.
"""
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .extension import has_kernel


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


# Value dtypes each compiled kernel takes; others are upcast to float32 around the kernel.
_KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}


def _kernel_available(device_type: str) -> bool:
    """Whether ``d2kd._C`` has forward and backward kernels for ``device_type``."""
    if device_type not in _KERNEL_DTYPES:
        return False
    return has_kernel("ms_deform_attn_forward", device_type) and has_kernel("ms_deform_attn_backward", device_type)


def _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) -> None:
    """Raises ValueError / TypeError naming the first inconsistent input (shapes in the module
    docstring). The level sizes are checked against S only when ``spatial_shapes`` is on the
    CPU: reading it from a GPU would synchronise every call (the CUDA kernel bounds-checks)."""
    if value.dim() != 4:
        raise ValueError(f"ms_deform_attn: value must be [B, S, H, C], got shape {tuple(value.shape)}")
    B, S, H, C = value.shape
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(f"ms_deform_attn: spatial_shapes must be [L, 2], got shape {tuple(spatial_shapes.shape)}")
    L = spatial_shapes.shape[0]
    if L < 1:
        raise ValueError("ms_deform_attn: spatial_shapes must have at least one level")
    if tuple(level_start_index.shape) != (L,):
        raise ValueError(
            f"ms_deform_attn: level_start_index must be [L] = [{L}], got shape {tuple(level_start_index.shape)}"
        )
    if sampling_locations.dim() != 6:
        raise ValueError(
            "ms_deform_attn: sampling_locations must be [B, Q, H, L, P, 2], "
            f"got shape {tuple(sampling_locations.shape)}"
        )
    _, Q, _, _, P, _ = sampling_locations.shape
    if (sampling_locations.shape[0], sampling_locations.shape[2], sampling_locations.shape[3],
            sampling_locations.shape[5]) != (B, H, L, 2):
        raise ValueError(
            f"ms_deform_attn: sampling_locations must be [B, Q, H, L, P, 2] with B={B}, H={H}, L={L} "
            f"(from value and spatial_shapes), got shape {tuple(sampling_locations.shape)}"
        )
    if tuple(attention_weights.shape) != (B, Q, H, L, P):
        raise ValueError(
            f"ms_deform_attn: attention_weights must be [B, Q, H, L, P] = {[B, Q, H, L, P]}, "
            f"got shape {tuple(attention_weights.shape)}"
        )
    for name, t in (("value", value), ("sampling_locations", sampling_locations),
                    ("attention_weights", attention_weights)):
        if not t.is_floating_point():
            raise TypeError(f"ms_deform_attn: {name} must be a floating-point tensor, got {t.dtype}")
    for name, t in (("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"ms_deform_attn: {name} must be an integer tensor, got {t.dtype}")
    devices = {t.device for t in (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)}
    if len(devices) != 1:
        raise ValueError(
            f"ms_deform_attn: all inputs must be on value's device ({value.device}), got spatial_shapes on "
            f"{spatial_shapes.device}, level_start_index on {level_start_index.device}, sampling_locations on "
            f"{sampling_locations.device}, attention_weights on {attention_weights.device}"
        )
    if spatial_shapes.device.type == "cpu":
        total = 0
        for lvl, ((h, w), start) in enumerate(zip(spatial_shapes.tolist(), level_start_index.tolist())):
            if h < 1 or w < 1:
                raise ValueError(f"ms_deform_attn: level {lvl} has spatial shape ({h}, {w}); sizes must be >= 1")
            if start != total:
                raise ValueError(
                    f"ms_deform_attn: level_start_index[{lvl}] is {start} but levels 0..{lvl - 1} hold {total} "
                    "tokens (level_start_index must be the running sum of H_l*W_l)"
                )
            total += h * w
        if total != S:
            raise ValueError(
                f"ms_deform_attn: value has S={S} tokens but spatial_shapes sum to sum_l H_l*W_l = {total}"
            )


class _MSDeformAttnFunction(torch.autograd.Function):
    """Autograd over ``torch.ops.d2kd.ms_deform_attn_{forward,backward}``: one backward kernel
    gives the gradients of value, sampling_locations and attention_weights together.
    Inputs must already be contiguous and of the kernel's dtypes (see the wrapper)."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return torch.ops.d2kd.ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        grad_value, grad_locations, grad_weights = torch.ops.d2kd.ms_deform_attn_backward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            grad_output.contiguous(),
        )
        return grad_value, None, None, grad_locations, grad_weights


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention; compiled kernel when available, else the reference.

    Shapes as in the module docstring; the output has value's dtype. Differentiable w.r.t.
    ``value``, ``sampling_locations`` and ``attention_weights``. Inputs may be non-contiguous.

    The compiled kernel runs when ``d2kd._C`` has one for the input's device: on the CPU for
    float32 / float64 values (half precision is upcast to float32 around it), on CUDA also for
    float16 / bfloat16 values (sampled at float32 coordinates, accumulated in float32).
    Otherwise (no extension, or none built for this device) the reference runs.

    Raises:
        ValueError: on inconsistent shapes or devices (for inputs on the CPU also when
            ``S != sum_l H_l*W_l`` or ``level_start_index`` is not the running sum of the sizes).
        TypeError: on non-floating inputs or non-integer ``spatial_shapes``/``level_start_index``.
    """
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    device_type = value.device.type
    if not _kernel_available(device_type):
        dtype = value.dtype
        return multi_scale_deformable_attention_reference(
            value, spatial_shapes, level_start_index, sampling_locations.to(dtype), attention_weights.to(dtype)
        )
    out_dtype = value.dtype
    if value.dtype not in _KERNEL_DTYPES[device_type]:
        value = value.float()
    coord_dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
    out = _MSDeformAttnFunction.apply(
        value.contiguous(),
        spatial_shapes.to(torch.int64).contiguous(),
        level_start_index.to(torch.int64).contiguous(),
        sampling_locations.to(coord_dtype).contiguous(),
        attention_weights.to(coord_dtype).contiguous(),
    )
    return out.to(out_dtype)
