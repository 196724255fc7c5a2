"""Teacher-sized vs student-sized detectors on the built-in shapes data, same schedule: the capacity
gap that distillation has to transfer.

    python benchmarks/builtin_baselines.py                          # all four, 1000 iterations
    python benchmarks/builtin_baselines.py --models frcnn_R50,frcnn_R18 --iters 3000
    python benchmarks/builtin_baselines.py --models dino_R50,dino_R18 --iters 1500

Models (configs in configs/baselines and configs/detr, each trained from scratch through
train_net.py with its own recipe, schedule stretched to ``--iters``, evaluated once at the end on
the 500 ``d2kd_shapes_val`` images):

    frcnn_R50 / frcnn_R18   Faster R-CNN R-50-FPN / R-18-FPN
    dino_R50 / dino_R18     DINO R-50 (3 enc / 4 dec, width 256, 200 queries) / DINO R-18
                            (2 / 3, width 128, 100 queries)
    ddetr_R18               Deformable DETR R-18

Runs live in ``--output`` (default ./output/builtin, shared with the demo, which reuses the
teacher and student trained here at the same iterations and vice versa). Prints a table (COCO AP, AP50, AP75, APs/m/l, seconds per iteration = median of
detectron2's step time over the second half) and the AP gap of each larger/smaller pair present. Finished runs are reused
(d2kd/tools/experiment.py). ``--extra key=value ...`` passes overrides to every run (e.g. the tiny
data set for a smoke run).
"""
import argparse
import os
import sys

os.environ.setdefault("MALLOC_MMAP_MAX_", "0")
os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "1000000000000")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from d2kd.tools.demo import QUIET, run_dir  # noqa: E402
from d2kd.tools.experiment import Run, RunSequence, format_table  # noqa: E402

MODELS = {  # key: (row label, config, prior seconds per iteration for the ETA)
    "frcnn_R50": ("Faster R-CNN R-50-FPN", "configs/baselines/faster_rcnn_R50_fpn_builtin.py", 0.65),
    "frcnn_R18": ("Faster R-CNN R-18-FPN", "configs/baselines/faster_rcnn_R18_fpn_builtin.py", 0.45),
    "dino_R50": ("DINO R-50", "configs/detr/dino_R50_builtin.py", 1.4),
    "dino_R18": ("DINO R-18", "configs/detr/dino_R18_builtin.py", 0.9),
    "ddetr_R18": ("Deformable DETR R-18", "configs/detr/deformable_detr_R18_builtin.py", 0.8),
}
PAIRS = [("frcnn_R50", "frcnn_R18"), ("dino_R50", "dino_R18")]  # (larger, smaller)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="frcnn_R50,frcnn_R18,dino_R50,dino_R18",
                        help=f"comma-separated, of {list(MODELS)}")
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--output", default="./output/builtin")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides for every run")
    args = parser.parse_args(argv)

    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    runs = []
    for key in keys:
        name, config, prior = MODELS[key]
        runs.append(Run(name=name, config=config, max_iter=args.iters, sec_per_iter=prior,
                        output_dir=run_dir(args.output, config, args.iters), overrides=QUIET + tuple(args.extra)))
    results = dict(zip(keys, RunSequence(runs, title="baselines").run()))
    print(f"\n{args.iters} iterations each, COCO box AP on d2kd_shapes_val")
    print(format_table(list(results.values())))
    for big, small in PAIRS:
        if big in results and small in results:
            gap = results[big].ap["AP"] - results[small].ap["AP"]
            print(f"gap {results[big].name} - {results[small].name}: {gap:+.1f} AP")
    return 0


if __name__ == "__main__":
    sys.exit(main())
