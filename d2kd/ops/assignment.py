"""Linear assignment (Hungarian matching) for a whole batch of cost matrices in one call.

Public entry points:

- :func:`batched_linear_sum_assignment`: ``cost[B, N, Mmax]`` with the real column count
  ``M_b`` of each matrix (padded columns are ignored); rectangular either way.
- :func:`linear_sum_assignment`: one ``[N, M]`` matrix, scipy-compatible result.
"""
from typing import List, Optional, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment as _scipy_lsa


def batched_linear_sum_assignment(
    cost: torch.Tensor, num_cols: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Minimum-cost assignment of rows to columns for each matrix of a batch.

    Args:
        cost: [B, N, Mmax] float tensor (any device). Matrix b uses columns ``[0, M_b)``.
        num_cols: [B] int64, the ``M_b``; ``None`` means every matrix uses all Mmax columns.

    Returns:
        [B, N] int64 on ``cost``'s device: the column assigned to each row, or -1 for a row left
        unassigned (``N > M_b``). Exactly ``min(N, M_b)`` rows of matrix b are assigned.

    Raises:
        ValueError: a cost within the valid region is NaN or infinite.
    """
    # Placeholder until the compiled solver lands: a scipy loop, exact but slower.
    B, N, M = cost.shape
    if num_cols is None:
        num_cols = torch.full((B,), M, dtype=torch.long)
    cost_np = cost.detach().cpu().double().numpy()
    out = np.full((B, N), -1, dtype=np.int64)
    for b, m in enumerate(num_cols.tolist()):
        c = cost_np[b, :, :m]
        if not np.isfinite(c).all():
            raise ValueError(f"batched_linear_sum_assignment: matrix {b} has non-finite costs")
        if m == 0 or N == 0:
            continue
        rows, cols = _scipy_lsa(c)
        out[b, rows] = cols
    return torch.from_numpy(out).to(cost.device)


def linear_sum_assignment(cost: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """scipy-compatible single-matrix assignment: ``(row_ind, col_ind)``, rows ascending."""
    assignment = batched_linear_sum_assignment(cost[None])[0]
    rows = (assignment >= 0).nonzero().squeeze(1)
    return rows, assignment[rows]


def assignment_to_indices(assignment: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Converts a [B, N] assignment into DETR-style per-image ``(row_ind, col_ind)`` pairs."""
    out = []
    for a in assignment:
        rows = (a >= 0).nonzero().squeeze(1)
        out.append((rows, a[rows]))
    return out
