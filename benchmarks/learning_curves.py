"""Learning-curve probes: short trainings evaluated every few hundred iterations, to tell whether
a recipe learns before committing to a long run.

    python benchmarks/learning_curves.py --config configs/detr/dino_R50_builtin.py --iters 400 \
        --eval-every 200 --name lr2e-4
    python benchmarks/learning_curves.py --config configs/detr/dino_R50_builtin.py --iters 400 \
        --eval-every 200 --name lr5e-4 optimizer.lr=5e-4

Each probe is a ``train_net.py`` run (reused when the same config, iterations and overrides ran
before, see d2kd/tools/experiment.py) under ``--output/<name>``; the schedule is the config's,
stretched to ``--iters``. Prints ``iteration  AP  AP50  APs  APm  APl`` at every evaluation
(COCO box AP on d2kd_shapes_val) and the median seconds per iteration.
"""
import argparse
import os
import sys

os.environ.setdefault("MALLOC_MMAP_MAX_", "0")
os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "1000000000000")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from d2kd.engine.hooks import read_metrics  # noqa: E402
from d2kd.tools.experiment import Run, RunSequence  # noqa: E402


def curve(output_dir: str):
    """[(iteration, {AP key: value})] of every evaluation in the run's metrics.json."""
    records = read_metrics(os.path.join(output_dir, "metrics.json"))
    return [(int(r["iteration"]) + 1, {k: float(r[f"bbox/{k}"]) for k in ("AP", "AP50", "APs", "APm", "APl")})
            for r in records if "bbox/AP" in r]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--iters", type=int, required=True)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--name", required=True, help="probe name (its output folder)")
    parser.add_argument("--output", default="./output/probes")
    parser.add_argument("--sec-per-iter", type=float, default=1.0, help="prior for the ETA")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)

    out = os.path.join(args.output, args.name)
    overrides = (f"train.eval_period={args.eval_every}", "train.checkpointer.period=100000",
                 *args.overrides)
    run = Run(args.name, args.config, out, args.iters, overrides, sec_per_iter=args.sec_per_iter)
    result = RunSequence([run], title="probe").run()[0]
    print(f"\nprobe {args.name}: {args.config} {' '.join(args.overrides)} ({args.iters} it, "
          f"{result.sec_per_iter:.2f} s/iter)")
    print("| iteration | AP | AP50 | APs | APm | APl |\n|---|---|---|---|---|---|")
    for it, ap in curve(run.path):
        print(f"| {it} | " + " | ".join(f"{ap[k]:.1f}" for k in ("AP", "AP50", "APs", "APm", "APl")) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
