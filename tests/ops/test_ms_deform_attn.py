"""Multi-scale deformable attention: the compiled kernels against the pure-PyTorch reference.

The reference (grid_sample, zero padding, align_corners=False) is the oracle. CPU tests need the
compiled extension (they skip, saying so, when d2kd._C lacks the op); CUDA tests need a GPU.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import d2kd.ops.extension as extension
import d2kd.ops.ms_deform_attn as msda
from d2kd.ops import multi_scale_deformable_attention, multi_scale_deformable_attention_reference

needs_cpu_kernel = pytest.mark.skipif(
    not msda._kernel_available("cpu"),
    reason=f"d2kd._C has no CPU kernel for ms_deform_attn (extension error: {extension.EXTENSION_ERROR})",
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")


def make_inputs(shapes, B=2, Q=6, H=2, C=5, P=3, dtype=torch.float64, spread=1.4, seed=0, device="cpu"):
    """Random inputs; locations spread a little beyond [0, 1] so that some corners fall outside."""
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    sizes = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    S, L = int(sizes.sum()), len(shapes)
    value = torch.randn(B, S, H, C, generator=g, dtype=dtype)
    locations = (torch.rand(B, Q, H, L, P, 2, generator=g, dtype=dtype) - 0.5) * spread + 0.5
    weights = torch.rand(B, Q, H, L, P, generator=g, dtype=dtype)
    return [t.to(device) for t in (value, spatial_shapes, level_start_index, locations, weights)]


def grads(fn, inputs, grad_output=None):
    """Output of fn and gradients w.r.t. value, sampling_locations and attention_weights."""
    value, shapes, starts, locations, weights = [t.detach().clone() for t in inputs]
    for t in (value, locations, weights):
        t.requires_grad_(True)
    out = fn(value, shapes, starts, locations, weights)
    if grad_output is None:
        grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out.backward(grad_output.to(device=out.device, dtype=out.dtype))
    return out.detach(), value.grad, locations.grad, weights.grad


def assert_close_scaled(actual, expected, rtol):
    """|actual - expected| <= rtol * max|expected| (gradients w.r.t. locations scale with W_l)."""
    scale = expected.abs().max().item() + 1.0
    assert (actual - expected).abs().max().item() <= rtol * scale


SHAPE_SETS = {
    "four_levels": [(6, 9), (3, 5), (2, 3), (1, 2)],
    "odd": [(7, 5), (3, 1), (1, 1)],
}


@needs_cpu_kernel
@pytest.mark.parametrize("shapes", list(SHAPE_SETS.values()), ids=list(SHAPE_SETS))
@pytest.mark.parametrize("C,P", [(5, 3), (16, 4), (32, 4), (64, 2)])
def test_forward_matches_reference(shapes, C, P):
    # C = 16/32/64 take the register kernels (2/4/8 vectors of float), C = 5 the general loops;
    # L*P = 12 or 6 samples leave partial vectors.
    for dtype, atol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        inputs = make_inputs(shapes, C=C, P=P, dtype=dtype)
        out = multi_scale_deformable_attention(*inputs)
        expected = multi_scale_deformable_attention_reference(*inputs)
        assert out.shape == expected.shape and out.dtype == dtype
        torch.testing.assert_close(out, expected, atol=atol, rtol=0)


@needs_cpu_kernel
@pytest.mark.parametrize("C,P", [(5, 3), (16, 4), (32, 2)])
def test_backward_matches_reference_autograd(C, P):
    for dtype, rtol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
        inputs = make_inputs(SHAPE_SETS["four_levels"], C=C, P=P, dtype=dtype)
        ours = grads(multi_scale_deformable_attention, inputs)
        expected = grads(multi_scale_deformable_attention_reference, inputs)
        for a, e in zip(ours, expected):
            assert_close_scaled(a, e, rtol)


@needs_cpu_kernel
def test_gradcheck_all_three_inputs():
    value, shapes, starts, locations, weights = make_inputs([(3, 4), (2, 2)], B=1, Q=2, H=2, C=3, P=2, seed=3)
    for t in (value, locations, weights):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v, loc, w: multi_scale_deformable_attention(v, shapes, starts, loc, w),
        (value, locations, weights),
        eps=1e-6,
        atol=1e-7,
    )


@needs_cpu_kernel
def test_points_outside_the_map_and_on_its_borders():
    # Level 0 is 4x4: loc * 4 - 0.5 is exact, so these hit x = -1 (a corner at 0 with zero weight
    # but a gradient), -0.5 (pixel centre 0), 3.5 (last centre), 4 (= W: nothing left), and
    # points far outside (also 1e6, where float -> int conversions would overflow).
    ticks = torch.tensor([-0.125, 0.0, 0.5, 1.0, 1.125, -0.3, 1.3, 1e6, -1e6], dtype=torch.float64)
    xs, ys = torch.meshgrid(ticks, ticks, indexing="ij")
    grid = torch.stack([xs, ys], -1).reshape(-1, 2)  # 81 points
    value, shapes, starts, _, _ = make_inputs([(4, 4), (3, 5)], B=1, Q=grid.shape[0], H=1, C=4, P=1)
    locations = grid.reshape(1, -1, 1, 1, 1, 2).expand(1, -1, 1, 2, 1, 2).contiguous()
    weights = torch.rand(1, grid.shape[0], 1, 2, 1, dtype=torch.float64) + 0.5
    inputs = [value, shapes, starts, locations, weights]
    ours = grads(multi_scale_deformable_attention, inputs)
    expected = grads(multi_scale_deformable_attention_reference, inputs)
    for a, e in zip(ours, expected):
        torch.testing.assert_close(a, e, atol=1e-10, rtol=0)
    # Points at least one pixel outside every level contribute nothing and get no gradient.
    far = (grid.abs() > 2).any(-1)
    assert ours[0][0, far].abs().max() == 0
    assert ours[2][0, far].abs().max() == 0
    assert ours[3][0, far].abs().max() == 0
    # On the border x = -1 (loc -0.125) the location gradient is non-zero, as in grid_sample.
    edge = (grid[:, 0] == -0.125) & (grid[:, 1] == 0.5)
    assert ours[2][0, edge, 0, 0, 0, 0].abs() > 0


@needs_cpu_kernel
@pytest.mark.parametrize("shapes", [[(7, 5)], [(3, 1)], [(1, 1)]], ids=["7x5", "3x1", "1x1"])
def test_one_level(shapes):
    inputs = make_inputs(shapes, B=1, Q=9, H=3, C=7, P=4, dtype=torch.float64)
    ours = grads(multi_scale_deformable_attention, inputs)
    expected = grads(multi_scale_deformable_attention_reference, inputs)
    for a, e in zip(ours, expected):
        torch.testing.assert_close(a, e, atol=1e-10, rtol=0)


@needs_cpu_kernel
def test_non_contiguous_inputs():
    value, shapes, starts, locations, weights = make_inputs(SHAPE_SETS["four_levels"], C=8, P=2)
    # Same numbers, other layouts: value stored as [B, H, S, C], locations as every other
    # entry of a larger tensor, weights stored transposed.
    value_nc = value.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3).requires_grad_()
    big = torch.zeros(*locations.shape[:-1], 4, dtype=locations.dtype)
    big[..., ::2] = locations
    locations_nc = big.requires_grad_()[..., ::2]
    weights_nc = weights.transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    assert not (value_nc.is_contiguous() or locations_nc.is_contiguous() or weights_nc.is_contiguous())
    out = multi_scale_deformable_attention(value_nc, shapes, starts, locations_nc, weights_nc)
    torch.testing.assert_close(out, multi_scale_deformable_attention(value, shapes, starts, locations, weights),
                               atol=0, rtol=0)
    out.sum().backward()
    _, gv, gl, gw = grads(multi_scale_deformable_attention_reference, [value, shapes, starts, locations, weights],
                          torch.ones_like(out))
    torch.testing.assert_close(value_nc.grad, gv, atol=1e-10, rtol=0)
    torch.testing.assert_close(big.grad[..., ::2], gl, atol=1e-10, rtol=0)
    assert big.grad[..., 1::2].abs().max() == 0
    torch.testing.assert_close(weights_nc.grad, gw, atol=1e-10, rtol=0)


@needs_cpu_kernel
def test_zero_queries():
    value, shapes, starts, locations, weights = make_inputs(SHAPE_SETS["odd"], B=2, Q=0, H=3, C=4)
    value.requires_grad_(True)
    locations.requires_grad_(True)
    out = multi_scale_deformable_attention(value, shapes, starts, locations, weights)
    assert out.shape == (2, 0, 12)
    out.sum().backward()
    assert value.grad.shape == value.shape and value.grad.abs().max() == 0
    assert locations.grad.shape == locations.shape


@needs_cpu_kernel
def test_batch_one():
    inputs = make_inputs(SHAPE_SETS["four_levels"], B=1, Q=11, H=4, C=16, P=4)
    ours = grads(multi_scale_deformable_attention, inputs)
    expected = grads(multi_scale_deformable_attention_reference, inputs)
    for a, e in zip(ours, expected):
        torch.testing.assert_close(a, e, atol=1e-10, rtol=0)


@needs_cpu_kernel
def test_results_do_not_depend_on_the_thread_count():
    # Large enough to be split over threads; the backward then gives each task fewer heads
    # (8 heads, batch 2: 1 thread -> 8 heads per task, 4 threads -> 4, 16 -> 1). Every grad_value entry
    # is summed in the same order whatever the split, so results are bitwise equal.
    inputs = make_inputs(SHAPE_SETS["four_levels"], B=2, Q=40, H=8, C=16, P=4, dtype=torch.float32)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 4, 16):
            torch.set_num_threads(threads)
            results.append(grads(multi_scale_deformable_attention, inputs))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)
    expected = grads(multi_scale_deformable_attention_reference, inputs)
    for a, e in zip(results[0], expected):
        assert_close_scaled(a, e, 2e-5)


@needs_cpu_kernel
def test_uses_the_compiled_kernel_when_available(monkeypatch):
    def no_reference(*args):
        raise AssertionError("the reference ran although d2kd._C has a CPU kernel")

    monkeypatch.setattr(msda, "multi_scale_deformable_attention_reference", no_reference)
    value, shapes, starts, locations, weights = make_inputs(SHAPE_SETS["odd"])
    value.requires_grad_(True)
    out = multi_scale_deformable_attention(value, shapes, starts, locations, weights)
    assert type(out.grad_fn).__name__ == "_MSDeformAttnFunctionBackward"


def _count_reference_calls(monkeypatch):
    calls = []
    original = msda.multi_scale_deformable_attention_reference

    def spy(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(msda, "multi_scale_deformable_attention_reference", spy)
    return calls


@pytest.mark.parametrize("how", ["extension_missing", "no_kernel_for_device"])
def test_falls_back_to_the_reference(monkeypatch, how):
    if how == "extension_missing":
        monkeypatch.setattr(extension, "_C", None)  # as if d2kd._C failed to import
    else:
        monkeypatch.setattr(msda, "_kernel_available", lambda device_type: False)
    assert not msda._kernel_available("cpu")
    calls = _count_reference_calls(monkeypatch)
    inputs = make_inputs(SHAPE_SETS["four_levels"], C=5)
    out, gv, gl, gw = grads(multi_scale_deformable_attention, inputs)
    assert len(calls) == 1
    expected = grads(multi_scale_deformable_attention_reference, inputs)  # the original, not the spy
    for a, e in zip((out, gv, gl, gw), expected):
        torch.testing.assert_close(a, e, atol=0, rtol=0)


@needs_cpu_kernel
def test_half_precision_on_cpu_is_upcast():
    value, shapes, starts, locations, weights = make_inputs(SHAPE_SETS["odd"], C=8, dtype=torch.float32)
    out = multi_scale_deformable_attention(value.half(), shapes, starts, locations, weights)
    assert out.dtype == torch.float16
    expected = multi_scale_deformable_attention_reference(value.half().float(), shapes, starts, locations, weights)
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=1e-2)


def _bad(**changes):
    value, shapes, starts, locations, weights = make_inputs(SHAPE_SETS["odd"], B=2, Q=3, H=2, C=4, P=2)
    args = dict(value=value, spatial_shapes=shapes, level_start_index=starts, sampling_locations=locations,
                attention_weights=weights)
    for key, fn in changes.items():
        args[key] = fn(args[key])
    return args


BAD_INPUTS = {
    "value_3d": (_bad(value=lambda v: v[0]), ValueError, r"value must be \[B, S, H, C\]"),
    "shapes_not_Lx2": (_bad(spatial_shapes=lambda s: s[:, :1]), ValueError, r"spatial_shapes must be \[L, 2\]"),
    "no_levels": (_bad(spatial_shapes=lambda s: s[:0], level_start_index=lambda s: s[:0]), ValueError,
                  "at least one level"),
    "start_index_length": (_bad(level_start_index=lambda s: s[:2]), ValueError, r"level_start_index must be \[L\]"),
    "locations_dims": (_bad(sampling_locations=lambda t: t[..., 0]), ValueError,
                       r"sampling_locations must be \[B, Q, H, L, P, 2\]"),
    "locations_heads": (_bad(sampling_locations=lambda t: t[:, :, :1]), ValueError, "with B=2, H=2, L=3"),
    "weights_shape": (_bad(attention_weights=lambda t: t[..., :1]), ValueError,
                      r"attention_weights must be \[B, Q, H, L, P\] = \[2, 3, 2, 3, 2\]"),
    "tokens_mismatch": (_bad(value=lambda v: v[:, :-1]), ValueError, "value has S=38 tokens but spatial_shapes sum"),
    "start_index_wrong": (_bad(level_start_index=lambda s: s + torch.tensor([0, 1, 0])), ValueError,
                          r"level_start_index\[1\] is 36 but levels 0..0 hold 35 tokens"),
    "empty_level": (_bad(spatial_shapes=lambda s: s * torch.tensor([[1, 1], [0, 1], [1, 1]])), ValueError,
                    r"level 1 has spatial shape \(0, 1\)"),
    "integer_value": (_bad(value=lambda v: v.long()), TypeError, "value must be a floating-point tensor"),
    "float_shapes": (_bad(spatial_shapes=lambda s: s.double()), TypeError, "spatial_shapes must be an integer"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_inputs_raise_clear_errors(name):
    args, error, message = BAD_INPUTS[name]
    with pytest.raises(error, match=message):
        multi_scale_deformable_attention(**args)


@needs_cpu_kernel
def test_the_op_itself_checks_its_inputs():
    value, shapes, starts, locations, weights = make_inputs(SHAPE_SETS["odd"], C=4)
    op = torch.ops.d2kd.ms_deform_attn_forward
    with pytest.raises(ValueError, match="value has S=38 tokens but spatial_shapes sum"):
        op(value[:, :-1], shapes, starts, locations, weights)
    with pytest.raises(ValueError, match=r"level_start_index\[1\] is 0"):
        op(value, shapes, torch.zeros_like(starts), locations, weights)
    with pytest.raises(TypeError, match="sampling_locations and attention_weights must be Double"):
        op(value, shapes, starts, locations.float(), weights)
    with pytest.raises(ValueError, match=r"grad_output must be \[B, Q, H\*C\]"):
        torch.ops.d2kd.ms_deform_attn_backward(value, shapes, starts, locations, weights, torch.zeros(1, 2, 3))


@needs_cpu_kernel
def test_meta_tensors_give_shapes():
    value, shapes, starts, locations, weights = [t.to("meta") for t in make_inputs(SHAPE_SETS["odd"], Q=5, H=3, C=4)]
    out = torch.ops.d2kd.ms_deform_attn_forward(value, shapes, starts, locations, weights)
    assert out.shape == (2, 5, 12) and out.device.type == "meta"
    gv, gl, gw = torch.ops.d2kd.ms_deform_attn_backward(value, shapes, starts, locations, weights, out)
    assert (gv.shape, gl.shape, gw.shape) == (value.shape, locations.shape, weights.shape)


@needs_cpu_kernel
def test_baseline_cpu_variant_matches_reference():
    # The kernels have an AVX2 and a baseline x86-64 variant; ATEN_CPU_CAPABILITY=default selects
    # the baseline one, which this machine would otherwise never run.
    script = textwrap.dedent(
        """
        import sys, torch
        sys.path[:0] = sys.argv[1:3]  # this folder, the repository root
        from test_ms_deform_attn import make_inputs, grads, assert_close_scaled, SHAPE_SETS
        from d2kd.ops import multi_scale_deformable_attention as ours, multi_scale_deformable_attention_reference as ref
        for C in (5, 16, 32):
            for dtype, rtol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
                inputs = make_inputs(SHAPE_SETS["four_levels"], C=C, P=4, dtype=dtype)
                for a, e in zip(grads(ours, inputs), grads(ref, inputs)):
                    assert_close_scaled(a, e, rtol)
        print("baseline ok")
        """
    )
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    here = os.path.dirname(os.path.abspath(__file__))
    result = subprocess.run([sys.executable, "-c", script, here, os.path.dirname(os.path.dirname(here))], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "baseline ok" in result.stdout, result.stderr[-3000:]


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_reference(dtype):
    if not msda._kernel_available("cuda"):
        pytest.skip("d2kd._C was built without the CUDA kernels")
    inputs = make_inputs(SHAPE_SETS["four_levels"], B=2, Q=33, H=3, C=40, P=3, dtype=dtype)
    expected = grads(multi_scale_deformable_attention_reference, inputs)
    ours = grads(multi_scale_deformable_attention, [t.cuda() for t in inputs])
    rtol = 1e-10 if dtype == torch.float64 else 2e-5
    for a, e in zip(ours, expected):
        assert a.is_cuda
        assert_close_scaled(a.cpu(), e, rtol)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision(dtype):
    if not msda._kernel_available("cuda"):
        pytest.skip("d2kd._C was built without the CUDA kernels")
    value, shapes, starts, locations, weights = make_inputs(SHAPE_SETS["four_levels"], Q=17, C=32, P=4,
                                                            dtype=torch.float32)
    value = value.to(dtype)
    inputs = [value, shapes, starts, locations, weights]
    ours = grads(multi_scale_deformable_attention, [t.cuda() for t in inputs])
    assert ours[0].dtype == dtype and ours[1].dtype == dtype and ours[2].dtype == torch.float32
    expected = grads(multi_scale_deformable_attention_reference, [value.float(), shapes, starts, locations, weights])
    for a, e in zip(ours, expected):
        assert_close_scaled(a.float().cpu(), e, 2e-2)
