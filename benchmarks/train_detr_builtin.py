"""DINO and Deformable DETR trained on the built-in shapes data through ``train_net.py``:
box AP and seconds per iteration of the CPU-sized configs (teacher- and student-sized).

Usage::

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 \\
        python benchmarks/train_detr_builtin.py [--configs dino_R50_builtin ...] [--max-iter N]
        [--tiny] [--output-root output/bench_detr_builtin] [--num-gpus 1] [opts ...]

Each config of ``configs/detr/`` is trained from scratch with its own schedule (or ``--max-iter``,
which stretches the schedule), evaluated once at the end on ``d2kd_shapes_val``, and summarised
from the run's ``metrics.json``:

- ``s/iter``: median of detectron2's per-iteration ``time`` (data loading excluded), after the
  first 5 iterations;
- ``AP``/``AP50``: COCO box AP of the final model;
- ``train min``: wall-clock minutes of the whole ``train_net.py`` call, evaluation included.

``--tiny`` is the smoke version (a few iterations on ``d2kd_shapes_tiny_*``, 128 px, and no
checkpoint but the last): it checks the pipeline, not the figures. Extra ``opts`` are passed to
every ``train_net.py`` call as config overrides.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIGS = ["dino_R50_builtin", "dino_R18_builtin", "deformable_detr_R18_builtin"]
TINY_OVERRIDES = [
    "dataloader.train.dataset.names=d2kd_shapes_tiny_train",
    "dataloader.test.dataset.names=d2kd_shapes_tiny_val",
    "train.log_period=2",
]


def read_metrics(path: str):
    """The JSON lines of a detectron2 ``metrics.json`` (missing file -> [])."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summarise(records, skip: int = 5):
    """``(s/iter, AP, AP50, last iteration)`` from metrics.json records (None where absent)."""
    times = [r["time"] for r in records if "time" in r and r.get("iteration", 0) >= skip]
    if not times:  # very short runs: take whatever was logged
        times = [r["time"] for r in records if "time" in r]
    evals = [r for r in records if "bbox/AP" in r]
    last = evals[-1] if evals else {}
    iters = [r["iteration"] for r in records if "time" in r]  # training records only
    return (
        statistics.median(times) if times else None,
        last.get("bbox/AP"),
        last.get("bbox/AP50"),
        max(iters) if iters else None,
    )


def run_config(name: str, args, extra_opts) -> dict:
    out_dir = os.path.join(args.output_root, name)
    os.makedirs(out_dir, exist_ok=True)
    opts = [f"train.output_dir={out_dir}", "train.eval_period=0"]
    if args.max_iter:
        opts.append(f"train.max_iter={args.max_iter}")
    if args.tiny:
        opts += TINY_OVERRIDES + [f"train.checkpointer.period={args.max_iter or 10}"]
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"),
           "--config-file", os.path.join(ROOT, "configs", "detr", f"{name}.py"),
           "--num-gpus", str(args.num_gpus)] + opts + list(extra_opts)
    metrics = os.path.join(out_dir, "metrics.json")
    if os.path.exists(metrics):
        os.remove(metrics)  # the summary must come from this run only
    log_path = os.path.join(out_dir, "benchmark.log")
    print(f"[{name}] {' '.join(cmd[1:])}\n[{name}] log: {log_path}", flush=True)
    start = time.time()
    with open(log_path, "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    minutes = (time.time() - start) / 60
    s_iter, ap, ap50, last_iter = summarise(read_metrics(metrics))
    return {"config": name, "rc": rc, "s_iter": s_iter, "ap": ap, "ap50": ap50,
            "iters": None if last_iter is None else last_iter + 1, "minutes": minutes}


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS,
                        help="names of configs/detr/*.py to train (default: %(default)s)")
    parser.add_argument("--max-iter", type=int, default=None,
                        help="override train.max_iter (the lr schedule stretches with it)")
    parser.add_argument("--tiny", action="store_true", help="smoke run on the tiny data set")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per run (CPU: gloo)")
    parser.add_argument("--output-root", default=os.path.join(ROOT, "output", "bench_detr_builtin"))
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run")
    args = parser.parse_args(argv)
    if args.tiny and args.max_iter is None:
        args.max_iter = 10
    results = [run_config(name, args, args.opts) for name in args.configs]

    print("\nDETR family on the built-in shapes data (train_net.py, CPU-sized configs)")
    print(f"{'config':<30} {'iters':>6} {'s/iter':>7} {'AP':>6} {'AP50':>6} {'train min':>9}  status")
    for r in results:
        status = "ok" if r["rc"] == 0 else f"FAILED (exit {r['rc']}, see its benchmark.log)"
        print(f"{r['config']:<30} {fmt(r['iters'], 'd'):>6} {fmt(r['s_iter'], '.2f'):>7} "
              f"{fmt(r['ap'], '.1f'):>6} {fmt(r['ap50'], '.1f'):>6} {r['minutes']:>9.1f}  {status}")
    return 0 if all(r["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
