"""Linear assignment (Hungarian matching) for a whole batch of cost matrices in one call.

Public entry points:

- :func:`batched_linear_sum_assignment`: ``cost[B, N, Mmax]`` with the real column count
  ``M_b`` of each matrix (padded columns are ignored); rectangular either way.
- :func:`linear_sum_assignment`: one ``[N, M]`` matrix, scipy-compatible result.
- :func:`assignment_to_indices`: ``[B, N]`` assignment -> DETR's per-image index pairs.

The compiled op ``torch.ops.d2kd.batched_linear_sum_assignment`` (csrc/assignment/) solves the
batch in C++ (Jonker-Volgenant shortest augmenting paths, images in parallel); CUDA inputs are
solved on the CPU and the result is moved back. Without the extension, a per-image loop over
``scipy.optimize.linear_sum_assignment`` gives the same optimal totals, only slower.
``torch.ops.d2kd.assignment_to_indices`` is the compiled half of :func:`assignment_to_indices`.
"""
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment as _scipy_lsa

from .extension import has_kernel

_kernel_cache = {}


def _compiled(op_name: str, device_type: str):
    """``torch.ops.d2kd.<op_name>`` if it has a kernel for ``device_type``, else None (cached)."""
    key = (op_name, device_type)
    if key not in _kernel_cache:
        ok = device_type in ("cpu", "cuda") and has_kernel(op_name, device_type)
        _kernel_cache[key] = getattr(torch.ops.d2kd, op_name) if ok else None
    return _kernel_cache[key]


def batched_linear_sum_assignment(
    cost: torch.Tensor, num_cols: Optional[Union[torch.Tensor, Sequence[int]]] = None
) -> torch.Tensor:
    """Minimum-cost assignment of rows to columns for each matrix of a batch.

    Args:
        cost: [B, N, Mmax] real tensor (any device; float32/float64 are solved as is, other
            dtypes as float64). Matrix b is ``cost[b, :, :M_b]``; what lies beyond column
            ``M_b`` is ignored (it may be NaN).
        num_cols: [B] integer tensor (or a sequence of B ints), the ``M_b``, each in
            ``[0, Mmax]``; ``None`` means every matrix uses all Mmax columns.

    Returns:
        [B, N] int64 on ``cost``'s device: the column assigned to each row, or -1 for a row left
        unassigned (``N > M_b``). Exactly ``min(N, M_b)`` rows of matrix b are assigned, no column
        twice, and their total cost is minimal (equal to scipy's; assignments may differ on ties).

    Raises:
        ValueError: a cost within the valid region is NaN or infinite (the message names the
            matrix), or the shapes/sizes are wrong.
    """
    if cost.dim() != 3 or cost.is_complex():
        raise ValueError(
            f"batched_linear_sum_assignment: cost must be a real [B, N, Mmax] tensor, got {cost.dtype} "
            f"{tuple(cost.shape)}"
        )
    if num_cols is not None:
        if not isinstance(num_cols, torch.Tensor):
            num_cols = torch.as_tensor(num_cols, dtype=torch.int64)
        elif num_cols.device.type != "cpu" and cost.device.type == "cpu":
            num_cols = num_cols.cpu()
        num_cols = num_cols.detach()
    op = _compiled("batched_linear_sum_assignment", cost.device.type)
    if op is not None:
        return op(cost.detach(), num_cols)
    return _scipy_batched_linear_sum_assignment(cost, num_cols)


def _scipy_batched_linear_sum_assignment(cost: torch.Tensor, num_cols: Optional[torch.Tensor]) -> torch.Tensor:
    """Fallback without the extension: one scipy call per matrix (same contract)."""
    B, N, M = cost.shape
    if num_cols is None:
        sizes = [M] * B
    else:
        if num_cols.shape != (B,):
            raise ValueError(f"batched_linear_sum_assignment: num_cols must be [B] = [{B}], got {tuple(num_cols.shape)}")
        sizes = [int(m) for m in num_cols.tolist()]
    cost_np = cost.detach().cpu()
    if not (cost_np.dtype == torch.float32 or cost_np.dtype == torch.float64):
        cost_np = cost_np.double()
    cost_np = cost_np.numpy()
    out = np.full((B, N), -1, dtype=np.int64)
    for b, m in enumerate(sizes):
        if not 0 <= m <= M:
            raise ValueError(f"batched_linear_sum_assignment: num_cols[{b}] = {m} is outside [0, {M}]")
        c = cost_np[b, :, :m]
        if not np.isfinite(c).all():
            raise ValueError(
                f"batched_linear_sum_assignment: cost matrix {b} has a non-finite entry (NaN or inf) "
                f"in its valid region cost[{b}, :, :{m}]"
            )
        if m == 0 or N == 0:
            continue
        rows, cols = _scipy_lsa(c)
        out[b, rows] = cols
    return torch.from_numpy(out).to(cost.device)


def linear_sum_assignment(cost: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """scipy-compatible single-matrix assignment.

    Args:
        cost: [N, M] real tensor.

    Returns:
        ``(row_ind, col_ind)``: two [min(N, M)] int64 tensors on ``cost``'s device, rows
        ascending; ``cost[row_ind, col_ind].sum()`` is minimal.
    """
    if cost.dim() != 2:
        raise ValueError(f"linear_sum_assignment: cost must be [N, M], got {tuple(cost.shape)}")
    assignment = batched_linear_sum_assignment(cost[None])[0]
    rows = (assignment >= 0).nonzero().squeeze(1)
    return rows, assignment[rows]


def assignment_to_indices(assignment: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Converts a [B, N] assignment into DETR-style per-image ``(row_ind, col_ind)`` pairs.

    Args:
        assignment: [B, N] int64, column per row or -1 (as returned by
            :func:`batched_linear_sum_assignment`).

    Returns:
        B pairs of int64 tensors ``(row_ind [K_b], col_ind [K_b])``, rows ascending.
    """
    if assignment.dim() != 2:
        raise ValueError(f"assignment_to_indices: expected [B, N], got {tuple(assignment.shape)}")
    op = _compiled("assignment_to_indices", "cpu") if assignment.device.type == "cpu" else None
    if op is not None:  # one call instead of a handful of ops and two splits
        flat = op(assignment.long())
        return list(zip(flat[0::2], flat[1::2]))
    mask = assignment >= 0
    b_idx, rows = mask.nonzero(as_tuple=True)
    counts = mask.sum(1).tolist()
    return list(zip(rows.split(counts), assignment[b_idx, rows].long().split(counts)))
