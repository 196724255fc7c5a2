"""Speed of ``d2kd.ops.batched_linear_sum_assignment`` against a per-image scipy loop (and lapx).

Usage::

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 \\
        python benchmarks/bench_assignment.py [--batch 16] [--threads 2] [--repeats 0]

Costs are DETR-style, not uniform random: ``2 * focal class cost + 5 * L1(cxcywh) + 2 * (-GIoU)``
between random predictions (sigmoid logits, boxes) and random targets, as Deformable DETR's
matcher computes them (the 900 x 900 case stands for DETRDistill's teacher-to-student matching:
the targets are another set of 900 predictions). Every method solves the same float32 batch,
interleaved in one run, and the table gives medians per call (``--stat min``: minima, which
resist load from other jobs better). Columns:

- ``scipy loop``: what DETR's matcher does per image, conversions included (tensor slice ->
  numpy, ``scipy.optimize.linear_sum_assignment``, indices back to int64 tensors);
- ``d2kd``: one ``batched_linear_sum_assignment`` call for the padded batch ([B, N] result);
- ``d2kd+idx``: the same followed by ``assignment_to_indices`` (DETR's per-image index pairs);
- ``lapx loop`` / ``lapx batch``: ``lap.lapjvr`` per image with the same conversions, and
  ``lap.lapjvr_batch`` (ragged batches padded with zero columns), when lapx is installed;
- ``max dC``: largest absolute difference of an image's total cost to scipy's, over all methods.
"""
import argparse
import os
import statistics
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment as scipy_lsa

from d2kd.ops import assignment_to_indices, batched_linear_sum_assignment, extension_available

try:
    import lap  # lapx, only for comparison
except ImportError:  # pragma: no cover - optional
    lap = None

# (label, queries N, ground truths per image: a fixed count, or (low, high) drawn skewed towards
# few objects as in COCO: low + floor((high - low + 1) * u ** 3.4), mean about 9 for 1..40)
CASES = [
    ("900 x 1..40 (ragged)", 900, (1, 40)),
    ("300 x 1..40 (ragged)", 300, (1, 40)),
    ("900 x 1..50 (ragged)", 900, (1, 50)),
    ("900 x 50", 900, 50),
    ("300 x 300", 300, 300),
    ("900 x 900", 900, 900),
]


def _random_boxes(n, gen):
    """[n, 4] normalised cxcywh boxes of plausible detection sizes."""
    cxcy = torch.rand(n, 2, generator=gen)
    wh = 0.02 + 0.4 * torch.rand(n, 2, generator=gen) ** 2
    return torch.cat([cxcy, wh], 1)


def _xyxy(b):
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def _generalized_iou(a, b):
    """[N, 4] x [M, 4] xyxy -> [N, M] GIoU."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None] - inter
    iou = inter / union
    lt_c = torch.min(a[:, None, :2], b[None, :, :2])
    rb_c = torch.max(a[:, None, 2:], b[None, :, 2:])
    hull = (rb_c - lt_c).prod(-1)
    return iou - (hull - union) / hull


def detr_cost(num_queries, num_targets, gen, num_classes=80, alpha=0.25, gamma=2.0):
    """[num_queries, num_targets] float32 matching cost, Deformable DETR's (2, 5, 2) weights."""
    logits = torch.randn(num_queries, num_classes, generator=gen) * 1.5 - 3.0
    boxes = _random_boxes(num_queries, gen)
    labels = torch.randint(num_classes, (num_targets,), generator=gen)
    target_boxes = _random_boxes(num_targets, gen)
    prob = logits.sigmoid()
    neg = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
    pos = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
    cost_class = pos[:, labels] - neg[:, labels]
    cost_bbox = torch.cdist(boxes, target_boxes, p=1)
    cost_giou = -_generalized_iou(_xyxy(boxes), _xyxy(target_boxes))
    return (2 * cost_class + 5 * cost_bbox + 2 * cost_giou).float()


def make_batch(num_queries, targets, batch, seed):
    """Padded [B, N, Mmax] float32 costs (padding = NaN, which must be ignored) and [B] sizes."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(targets, tuple):
        low, high = targets
        u = torch.rand(batch, generator=gen, dtype=torch.float64)
        sizes = (low + ((high - low + 1) * u**3.4).floor().long()).clamp(max=high)
    else:
        sizes = torch.full((batch,), targets)
    mmax = int(sizes.max())
    cost = torch.full((batch, num_queries, mmax), float("nan"))
    for b, m in enumerate(sizes.tolist()):
        cost[b, :, :m] = detr_cost(num_queries, m, gen)
    return cost, sizes


# ----------------------------------------------------------------------------------- methods
def scipy_loop(cost, sizes):
    out = []
    for b, m in enumerate(sizes.tolist()):
        rows, cols = scipy_lsa(cost[b, :, :m].numpy())
        out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return out


def d2kd_batched(cost, sizes):
    return batched_linear_sum_assignment(cost, sizes)


def d2kd_indices(cost, sizes):
    return assignment_to_indices(batched_linear_sum_assignment(cost, sizes))


def lapx_loop(cost, sizes):
    out = []
    for b, m in enumerate(sizes.tolist()):
        rows, cols = lap.lapjvr(cost[b, :, :m].numpy(), extend_cost=True, return_cost=False)
        out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return out


def lapx_batch(cost, sizes, threads):
    # lapjvr_batch needs one shape: pad ragged images with zero-cost columns (exact while
    # N >= Mmax: the padded columns take leftover rows) and drop them afterwards.
    padded = cost.clone()
    for b, m in enumerate(sizes.tolist()):
        padded[b, :, m:] = 0
    rows_l, cols_l = lap.lapjvr_batch(padded.numpy(), extend_cost=True, return_cost=False, n_threads=threads)
    out = []
    for rows, cols, m in zip(rows_l, cols_l, sizes.tolist()):
        keep = cols < m
        out.append((torch.as_tensor(rows[keep], dtype=torch.int64), torch.as_tensor(cols[keep], dtype=torch.int64)))
    return out


def totals(cost, sizes, result):
    """Per-image total cost (float64) of a result: a [B, N] assignment or index pairs."""
    c = cost.double()
    if isinstance(result, torch.Tensor):
        result = assignment_to_indices(result)
    out = []
    for b, ((rows, cols), m) in enumerate(zip(result, sizes.tolist())):
        assert len(rows) == min(cost.shape[1], m) and len(set(cols.tolist())) == len(cols)
        assert bool((cols < m).all())
        out.append(float(c[b, rows, cols].sum()))
    return np.array(out)


def _time(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def run_case(label, num_queries, targets, batch, threads, repeats, stat="median", seed=0):
    cost, sizes = make_batch(num_queries, targets, batch, seed)
    methods = {"scipy loop": (scipy_loop,), "d2kd": (d2kd_batched,), "d2kd+idx": (d2kd_indices,)}
    if lap is not None:
        methods["lapx loop"] = (lapx_loop,)
        if num_queries >= int(sizes.max()):  # zero padding is only exact then
            methods["lapx batch"] = (lambda c, s: lapx_batch(c, s, threads),)
    reference = totals(cost, sizes, scipy_loop(cost, sizes))
    max_diff = 0.0
    for name, (fn,) in methods.items():
        max_diff = max(max_diff, float(np.abs(totals(cost, sizes, fn(cost, sizes)) - reference).max()))
    if repeats <= 0:  # about 1.5 s of scipy per case, at least 5 and at most 300 rounds
        per_call = _time(scipy_loop, cost, sizes)
        repeats = int(min(300, max(5, 1.5 / max(per_call, 1e-6))))
    times = {name: [] for name in methods}
    for _ in range(repeats):  # interleaved, so that load from other processes hits all alike
        for name, (fn,) in methods.items():
            times[name].append(_time(fn, cost, sizes))
    reduce = statistics.median if stat == "median" else min
    med = {name: reduce(t) * 1e3 for name, t in times.items()}
    return med, max_diff, repeats, float(sizes.float().mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads and lapx workers")
    parser.add_argument("--repeats", type=int, default=0, help="timed rounds per case (0: by case size)")
    parser.add_argument("--cases", default="", help="comma-separated case numbers (1-based) to run")
    parser.add_argument("--stat", choices=("median", "min"), default="median",
                        help="per-call statistic; min is the robust one on a machine shared with other jobs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chosen = [CASES[int(k) - 1] for k in args.cases.split(",")] if args.cases else CASES

    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, float32 DETR-style costs; "
          f"extension: {extension_available()}; lapx: {getattr(lap, '__version__', 'not installed')}; "
          f"MALLOC_MMAP_MAX_={os.environ.get('MALLOC_MMAP_MAX_', 'unset')}; {args.stat}s in ms; "
          f"load average {os.getloadavg()[0]:.2f}")
    cols = ["scipy loop", "d2kd", "d2kd+idx", "lapx loop", "lapx batch"]
    header = f"| {'case':<22} | mean M | rounds | " + " | ".join(f"{c:>10}" for c in cols)
    header += " | vs scipy | vs lapx best |   max dC |"
    print(header)
    print("|" + "|".join("-" * len(p) for p in header.split("|")[1:-1]) + "|")
    for label, n, targets in chosen:
        med, diff, repeats, mean_m = run_case(label, n, targets, args.batch, args.threads, args.repeats, args.stat)
        cells = [f"{med[c]:10.3f}" if c in med else f"{'-':>10}" for c in cols]
        lapx_best = min([med[c] for c in ("lapx loop", "lapx batch") if c in med], default=None)
        vs_lapx = f"{lapx_best / med['d2kd']:11.2f}x" if lapx_best else f"{'-':>12}"
        print(f"| {label:<22} | {mean_m:6.1f} | {repeats:6d} | " + " | ".join(cells)
              + f" | {med['scipy loop'] / med['d2kd']:7.1f}x | {vs_lapx} | {diff:8.1e} |", flush=True)


if __name__ == "__main__":
    main()
