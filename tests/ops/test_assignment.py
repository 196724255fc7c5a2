"""Batched linear assignment: optimal totals equal scipy's, on the compiled op and its fallback."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment as scipy_lsa

import d2kd.ops.assignment as assignment
from d2kd.ops import (
    assignment_to_indices,
    batched_linear_sum_assignment,
    extension_available,
    has_kernel,
    linear_sum_assignment,
)

OP = "batched_linear_sum_assignment"
compiled_only = pytest.mark.skipif(not extension_available(), reason="d2kd._C not built")


@pytest.fixture(params=["compiled", "compiled-scalar", "scipy"])
def impl(request, monkeypatch):
    """Runs a test on the compiled ops (vectorised kernels where the CPU has AVX2, and the
    portable ones) and on the Python/scipy fallback (as without the extension)."""
    if request.param.startswith("compiled"):
        if not has_kernel(OP, "cpu"):
            pytest.skip("d2kd._C not built")
        if request.param == "compiled-scalar":
            monkeypatch.setenv("D2KD_LSA_SCALAR", "1")
    else:
        monkeypatch.setattr(assignment, "has_kernel", lambda *args: False)
        monkeypatch.setattr(assignment, "_kernel_cache", {})
    return request.param


def check(cost, num_cols, result):
    """Asserts that result [B, N] is a valid optimal assignment of every matrix of the batch."""
    B, N, M = cost.shape
    sizes = [M] * B if num_cols is None else [int(m) for m in num_cols]
    assert result.shape == (B, N) and result.dtype == torch.int64
    c64 = cost.double().numpy()
    res = result.numpy()
    for b, m in enumerate(sizes):
        a = res[b]
        rows = np.flatnonzero(a >= 0)
        cols = a[rows]
        assert (a >= -1).all()
        assert len(rows) == min(N, m), f"matrix {b}: {len(rows)} assignments, expected {min(N, m)}"
        assert len(np.unique(cols)) == len(cols), f"matrix {b}: a column is used twice"
        assert (cols < m).all(), f"matrix {b}: a padded column is used"
        if len(rows) == 0:
            continue
        c = c64[b, :, :m]
        r_ref, c_ref = scipy_lsa(c)
        ours, ref = c[rows, cols].sum(), c[r_ref, c_ref].sum()
        tol = 1e-9 * max(1.0, np.abs(c).max()) * len(rows)
        assert abs(ours - ref) <= tol, f"matrix {b}: total {ours!r} vs scipy {ref!r}"


# ------------------------------------------------------------------------ property tests
@st.composite
def cost_matrices(draw, max_side=12):
    """[N, M] costs of many kinds: generic, integer with ties, constant, scaled, equal rows."""
    n = draw(st.integers(0, max_side))
    m = draw(st.integers(0, max_side))
    kind = draw(st.sampled_from(["float", "ties", "constant", "equal_rows", "equal_cols", "scaled", "mixed"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "float":
        c = rng.normal(size=(n, m))
    elif kind == "ties":
        c = rng.integers(-2, 3, size=(n, m)).astype(np.float64)
    elif kind == "constant":
        c = np.full((n, m), draw(st.floats(-1e6, 1e6)))
    elif kind == "equal_rows":
        c = np.broadcast_to(rng.integers(0, 4, size=(1, m)), (n, m)).astype(np.float64)
    elif kind == "equal_cols":
        c = np.broadcast_to(rng.normal(size=(n, 1)), (n, m)).copy()
    elif kind == "scaled":
        c = rng.uniform(-1, 1, size=(n, m)) * 10.0 ** draw(st.integers(-30, 30))
    else:  # magnitudes from 1e-6 to 1e6 in one matrix
        c = rng.uniform(-1, 1, size=(n, m)) * 10.0 ** rng.integers(-6, 7, size=(n, m))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return torch.tensor(c, dtype=dtype)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(c=cost_matrices())
def test_single_matrix_total_equals_scipy(impl, c):
    check(c[None], None, batched_linear_sum_assignment(c[None]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(c=cost_matrices(max_side=70))
def test_medium_matrix_total_equals_scipy(impl, c):
    # Sides beyond 16 run the vector loops of the compiled kernels, not only their tails.
    check(c[None], None, batched_linear_sum_assignment(c[None]))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_ragged_batch_equals_per_matrix_scipy(impl, data):
    B = data.draw(st.integers(0, 6))
    N = data.draw(st.integers(0, 10))
    mmax = data.draw(st.integers(0, 10))
    sizes = torch.tensor(data.draw(st.lists(st.integers(0, mmax), min_size=B, max_size=B)), dtype=torch.int64)
    seed = data.draw(st.integers(0, 2**32 - 1))
    gen = torch.Generator().manual_seed(seed)
    cost = torch.randint(0, 4, (B, N, mmax), generator=gen).double()
    if data.draw(st.booleans()):
        cost = cost + torch.rand(B, N, mmax, generator=gen)
    for b, m in enumerate(sizes.tolist()):
        cost[b, :, m:] = float("nan")  # padding is ignored, whatever it holds
    check(cost, sizes, batched_linear_sum_assignment(cost, sizes))


# ------------------------------------------------------------------------ larger matrices
def detr_like_cost(N, M, gen):
    """A cheap stand-in for DETR's matching cost: L1 between boxes plus a class term."""
    pred, tgt = torch.rand(N, 4, generator=gen), torch.rand(M, 4, generator=gen)
    return 5 * torch.cdist(pred, tgt, p=1) - torch.rand(N, 1, generator=gen) * 2


def test_detr_shapes_ragged(impl):
    gen = torch.Generator().manual_seed(0)
    sizes = torch.tensor([1, 50, 7, 0, 23, 2, 50, 13])
    cost = torch.full((8, 900, 50), float("nan"))
    for b, m in enumerate(sizes.tolist()):
        cost[b, :, :m] = detr_like_cost(900, m, gen)
    check(cost, sizes, batched_linear_sum_assignment(cost, sizes))


@pytest.mark.parametrize("shape", [(120, 120), (60, 150), (150, 60), (149, 150)])
@pytest.mark.parametrize("values", ["uniform", "ties"])
def test_larger_matrices(impl, shape, values):
    gen = torch.Generator().manual_seed(1)
    if values == "uniform":
        cost = torch.rand(3, *shape, generator=gen)
    else:
        cost = torch.randint(0, 3, (3, *shape), generator=gen).float()
    check(cost, None, batched_linear_sum_assignment(cost))


def test_more_ground_truths_than_queries(impl):
    gen = torch.Generator().manual_seed(2)
    cost = torch.rand(4, 5, 30, generator=gen)
    sizes = torch.tensor([30, 3, 5, 12])
    out = batched_linear_sum_assignment(cost, sizes)
    check(cost, sizes, out)
    assert (out[0] >= 0).all() and (out[1] >= 0).sum() == 3


def test_float32_and_float64_agree(impl):
    gen = torch.Generator().manual_seed(3)
    cost = torch.rand(4, 40, 25, generator=gen)
    a32 = batched_linear_sum_assignment(cost)
    a64 = batched_linear_sum_assignment(cost.double())
    assert torch.equal(a32, a64)  # float32 costs are solved as their float64 values


def test_other_dtypes_are_converted(impl):
    cost = torch.tensor([[[4, 1, 3], [2, 0, 5], [3, 2, 2]]])
    for dtype in (torch.int64, torch.float16, torch.bfloat16):
        out = batched_linear_sum_assignment(cost.to(dtype))
        assert out.tolist() == [[1, 0, 2]]


# ------------------------------------------------------------------------ edge cases
@pytest.mark.parametrize("shape", [(0, 4, 5), (3, 0, 5), (3, 4, 0), (0, 0, 0)])
def test_empty(impl, shape):
    out = batched_linear_sum_assignment(torch.rand(shape))
    assert out.shape == shape[:2] and out.dtype == torch.int64 and (out == -1).all()


def test_zero_columns_in_some_matrices(impl):
    cost = torch.rand(3, 4, 2)
    out = batched_linear_sum_assignment(cost, torch.tensor([0, 2, 1]))
    assert (out[0] == -1).all() and (out[1] >= 0).sum() == 2 and (out[2] >= 0).sum() == 1
    assert torch.equal(batched_linear_sum_assignment(cost, [0, 2, 1]), out)  # sizes as DETR lists them


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_cost_names_the_matrix(impl, bad):
    cost = torch.rand(4, 6, 5)
    cost[2, 3, 1] = bad
    cost[1, 0, 4] = bad  # padding of matrix 1: ignored
    sizes = torch.tensor([5, 4, 5, 5])
    with pytest.raises(ValueError, match="matrix 2 "):
        batched_linear_sum_assignment(cost, sizes)
    cost[2, 3, 1] = 0.5
    check(cost, sizes, batched_linear_sum_assignment(cost, sizes))


def test_bad_arguments(impl):
    with pytest.raises(ValueError):
        batched_linear_sum_assignment(torch.rand(4, 5))
    with pytest.raises(ValueError):
        batched_linear_sum_assignment(torch.rand(2, 4, 5), torch.tensor([5, 6]))
    with pytest.raises(ValueError):
        batched_linear_sum_assignment(torch.rand(2, 4, 5), torch.tensor([5]))


# ------------------------------------------------------------------------ compiled op
@compiled_only
def test_registered_with_the_dispatcher():
    assert has_kernel(OP, "cpu")
    assert has_kernel("assignment_to_indices", "cpu")
    out = torch.ops.d2kd.batched_linear_sum_assignment(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), None)
    assert out.tolist() == [[1, 0]]
    meta = torch.ops.d2kd.batched_linear_sum_assignment(torch.empty(3, 7, 2, device="meta"), None)
    assert meta.shape == (3, 7) and meta.dtype == torch.int64 and meta.device.type == "meta"


@compiled_only
def test_deterministic_across_thread_counts_and_kernels(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    sizes = torch.randint(20, 61, (16,), generator=gen)
    sizes[3] = 0
    cost = torch.randint(0, 5, (16, 600, 60), generator=gen).float()  # ties everywhere
    cost[:4] = torch.rand(4, 600, 60, generator=gen)
    square = torch.rand(8, 150, 150, generator=gen)  # both batches are big enough for threads
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 1, 2):
            torch.set_num_threads(n)
            results.append((batched_linear_sum_assignment(cost, sizes), batched_linear_sum_assignment(square)))
        # The portable kernels give the same results as the vectorised ones.
        monkeypatch.setenv("D2KD_LSA_SCALAR", "1")
        results.append((batched_linear_sum_assignment(cost, sizes), batched_linear_sum_assignment(square)))
    finally:
        torch.set_num_threads(threads)
    for a, s in results[1:]:
        assert torch.equal(a, results[0][0]) and torch.equal(s, results[0][1])
    check(cost, sizes, results[0][0])
    check(square, None, results[0][1])


@compiled_only
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_cuda_input():
    cost = torch.rand(3, 20, 7)
    sizes = torch.tensor([7, 3, 0])
    out = batched_linear_sum_assignment(cost.cuda(), sizes.cuda())
    assert out.device.type == "cuda"
    assert torch.equal(out.cpu(), batched_linear_sum_assignment(cost, sizes))
    for (r, c), (r_cpu, c_cpu) in zip(assignment_to_indices(out), assignment_to_indices(out.cpu())):
        assert r.device.type == "cuda" and torch.equal(r.cpu(), r_cpu) and torch.equal(c.cpu(), c_cpu)


def test_fallback_is_used_without_the_extension(monkeypatch):
    called = []
    monkeypatch.setattr(assignment, "has_kernel", lambda *args: False)
    monkeypatch.setattr(assignment, "_kernel_cache", {})
    monkeypatch.setattr(assignment, "_scipy_lsa", lambda c: called.append(c.shape) or scipy_lsa(c))
    cost = torch.rand(2, 4, 3)
    check(cost, None, batched_linear_sum_assignment(cost))
    assert called == [(4, 3), (4, 3)]


# ------------------------------------------------------------------------ helpers
def test_linear_sum_assignment_is_scipy_compatible(impl):
    gen = torch.Generator().manual_seed(5)
    for shape in [(6, 6), (8, 3), (3, 8), (0, 3)]:
        c = torch.rand(*shape, generator=gen, dtype=torch.float64)
        rows, cols = linear_sum_assignment(c)
        r_ref, c_ref = scipy_lsa(c.numpy())
        assert rows.tolist() == sorted(rows.tolist()) and len(rows) == len(r_ref)
        assert abs(float(c[rows, cols].sum()) - float(c.numpy()[r_ref, c_ref].sum())) < 1e-12


def test_assignment_to_indices(impl):
    a = torch.tensor([[-1, 2, 0, -1], [-1, -1, -1, -1], [3, 1, 0, 2]])
    for x in (a, a.int(), a[:, :0]):
        out = assignment_to_indices(x)
        expected = [([1, 2], [2, 0]), ([], []), ([0, 1, 2, 3], [3, 1, 0, 2])] if x.shape[1] else [([], [])] * 3
        assert [(r.tolist(), c.tolist()) for r, c in out] == expected
        assert all(r.dtype == torch.int64 and c.dtype == torch.int64 for r, c in out)
    assert assignment_to_indices(torch.zeros(0, 5, dtype=torch.int64)) == []
    with pytest.raises(ValueError):
        assignment_to_indices(torch.zeros(5, dtype=torch.int64))
