"""The MultiScaleDeformableAttention module: shapes, initial sampling grid, point vs box references."""
import pytest
import torch

from d2kd.layers import MultiScaleDeformableAttention
from d2kd.ops import multi_scale_deformable_attention_reference

SHAPES = torch.tensor([[8, 10], [4, 5]])
START = torch.tensor([0, 80])


def _inputs(B=2, Q=3, C=16, L=2, ref_dims=2):
    S = int(SHAPES.prod(1).sum())
    ref = torch.rand(B, Q, L, ref_dims) * 0.5 + 0.25
    return torch.randn(B, Q, C), ref, torch.randn(B, S, C)


@pytest.mark.parametrize("ref_dims", [2, 4])
def test_shapes_and_gradients(ref_dims):
    attn = MultiScaleDeformableAttention(embed_dim=16, num_heads=4, num_levels=2, num_points=3)
    query, ref, value = _inputs(ref_dims=ref_dims)
    query.requires_grad_(True)
    mask = torch.zeros(2, value.shape[1], dtype=torch.bool)
    mask[1, -5:] = True
    out = attn(query, ref, value, SHAPES, START, mask)
    assert out.shape == (2, 3, 16)
    out.sum().backward()
    assert query.grad is not None and torch.isfinite(query.grad).all()
    assert attn.sampling_offsets.weight.grad.abs().sum() > 0


def test_initial_grid_points_and_boxes():
    H, L, P = 8, 2, 4
    attn = MultiScaleDeformableAttention(embed_dim=32, num_heads=H, num_levels=L, num_points=P)
    query = torch.randn(1, 1, 32)
    grid = MultiScaleDeformableAttention.initial_offsets(H, L, P)
    # directions: head 0 points along +x, head 2 along +y, head 1 on the diagonal (max-norm 1)
    assert torch.allclose(grid[0, 0, :, 0], torch.tensor([1.0, 2, 3, 4]))
    assert torch.allclose(grid[2, 1, 1], torch.tensor([0.0, 2.0]), atol=1e-6)
    assert torch.allclose(grid[1, 0, 0], torch.tensor([1.0, 1.0]))
    assert torch.allclose(grid.abs().amax(-1), torch.arange(1.0, P + 1).expand(H, L, P))

    points = torch.full((1, 1, L, 2), 0.5)
    loc = attn.sampling_locations(query, points, SHAPES)  # [1, 1, H, L, P, 2]
    normalizer = SHAPES.flip(-1).float()  # (W, H)
    expected = 0.5 + grid / normalizer[None, :, None, :]
    assert torch.allclose(loc[0, 0], expected, atol=1e-6)

    boxes = torch.tensor([0.5, 0.5, 0.4, 0.2]).expand(1, 1, L, 4)
    loc = attn.sampling_locations(query, boxes, SHAPES)
    expected = 0.5 + grid / P * torch.tensor([0.2, 0.1])
    assert torch.allclose(loc[0, 0], expected, atol=1e-6)
    # the outermost points lie on the box border
    outer = loc[0, 0, :, :, -1]
    on_border = ((outer[..., 0] - 0.5).abs() - 0.2).abs().lt(1e-6) | ((outer[..., 1] - 0.5).abs() - 0.1).abs().lt(1e-6)
    assert on_border.all()


def test_initial_attention_is_uniform_and_matches_reference():
    attn = MultiScaleDeformableAttention(embed_dim=16, num_heads=2, num_levels=2, num_points=2)
    query, ref, value = _inputs(ref_dims=4)
    out = attn(query, ref, value, SHAPES, START)
    v = attn.value_proj(value).view(2, -1, 2, 8)
    loc = attn.sampling_locations(query, ref, SHAPES)
    weights = torch.full((2, 3, 2, 2, 2), 0.25)
    expected = attn.output_proj(multi_scale_deformable_attention_reference(v, SHAPES, START, loc, weights))
    assert torch.allclose(out, expected, atol=1e-5)


def test_box_reference_scales_with_box_size():
    attn = MultiScaleDeformableAttention(embed_dim=16, num_heads=2, num_levels=2, num_points=2)
    nn_init = torch.nn.init
    nn_init.normal_(attn.sampling_offsets.weight)
    query = torch.randn(1, 4, 16)
    small = torch.tensor([0.5, 0.5, 0.1, 0.1]).expand(1, 4, 2, 4)
    large = torch.tensor([0.5, 0.5, 0.4, 0.4]).expand(1, 4, 2, 4)
    d_small = attn.sampling_locations(query, small, SHAPES) - 0.5
    d_large = attn.sampling_locations(query, large, SHAPES) - 0.5
    assert torch.allclose(d_large, 4 * d_small, atol=1e-5)


def test_rejects_bad_reference_shape_and_levels():
    attn = MultiScaleDeformableAttention(embed_dim=16, num_heads=2, num_levels=2, num_points=2)
    query, ref, value = _inputs(ref_dims=3)
    with pytest.raises(ValueError, match="2 or 4"):
        attn(query, ref, value, SHAPES, START)
    with pytest.raises(ValueError, match="divisible"):
        MultiScaleDeformableAttention(embed_dim=10, num_heads=4)
