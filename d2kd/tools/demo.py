"""The README's main job: KD-DETR distillation of a DINO teacher into a Faster R-CNN student on the
built-in shapes data, end to end on a CPU.

    python -m d2kd.tools.demo                       # what `make demo` runs
    python -m d2kd.tools.demo --teacher-iters 1500 --student-iters 1000   # longer, better

Three trainings through ``train_net.py``, each evaluated on ``d2kd_shapes_val`` (500 images):

1. the teacher, DINO R-50 4-scale (configs/detr/dino_R50_builtin.py);
2. the student alone, Faster R-CNN R-18-FPN (configs/baselines/faster_rcnn_R18_fpn_builtin.py);
3. the same student with KD-DETR from that teacher (configs/kd_detr/dino_to_frcnn_builtin.py),
   at the student's schedule.

It prints the teacher / student / distilled AP table and writes it with a plot (AP bars and
training losses) to ``<output>/demo_teacher<T>it_student<S>it.{md,png}``. A run that finished before with the same settings
is reused (a second demo reuses the teacher and the students), so changing only
``--student-iters`` retrains only the students. The default schedule (200 iterations each) took
12.8 minutes on a 2-core machine, data generation included (300 each: 18.1 minutes); a fresh
machine adds about 5 minutes of installation. That is far too short for the teacher to be any
good, so the distillation gain at these defaults is not the point of the demo:
benchmarks/kd_gain.py measures that.
"""
import argparse
import os
import sys
import time

from d2kd.tools.experiment import Run, RunSequence, format_table, plot_results


def run_dir(root: str, config: str, iters: int, suffix: str = "") -> str:
    """``<root>/<config name>_<iters>it<suffix>``: the naming benchmarks/builtin_baselines.py
    shares, so that a model trained by one is reused by the other."""
    return os.path.join(root, f"{os.path.splitext(os.path.basename(config))[0]}_{iters}it{suffix}")


# No periodic evaluation or checkpoint: one evaluation and model_final.pth at the end.
QUIET = ("train.eval_period=0", "train.checkpointer.period=100000")
TEACHER = "configs/detr/dino_R50_builtin.py"
STUDENT = "configs/baselines/faster_rcnn_R18_fpn_builtin.py"
DISTILLED = "configs/kd_detr/dino_to_frcnn_builtin.py"


def build_runs(root: str, teacher_iters: int, student_iters: int) -> list:
    teacher_dir = run_dir(root, TEACHER, teacher_iters)
    return [
        Run("teacher DINO R-50", TEACHER, teacher_dir, teacher_iters, QUIET, sec_per_iter=1.45),
        Run("student FRCNN R-18", STUDENT, run_dir(root, STUDENT, student_iters), student_iters, QUIET,
            sec_per_iter=0.45),
        Run("student + KD-DETR", DISTILLED, run_dir(root, DISTILLED, student_iters, f"_teacher{teacher_iters}it"),
            student_iters, QUIET + (f"model.teacher.weights={teacher_dir}/model_final.pth",), sec_per_iter=1.1),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="./output/builtin", help="where the runs are written")
    parser.add_argument("--teacher-iters", type=int, default=200)
    parser.add_argument("--student-iters", type=int, default=200)
    args = parser.parse_args(argv)

    start = time.time()
    runs = build_runs(args.output, args.teacher_iters, args.student_iters)
    print(f"d2kd demo: DINO R-50 teacher ({args.teacher_iters} it) -> Faster R-CNN R-18 student "
          f"({args.student_iters} it), alone and with KD-DETR; output in {args.output}", flush=True)
    results = RunSequence(runs, title="demo").run()
    table = format_table(results, reference="student FRCNN R-18")
    stem = os.path.join(args.output, f"demo_teacher{args.teacher_iters}it_student{args.student_iters}it")
    plot = plot_results(results, stem + ".png", "KD-DETR: DINO -> Faster R-CNN (built-in data)")
    with open(stem + ".md", "w") as f:
        f.write(table + "\n")
    print("\nCOCO box AP on d2kd_shapes_val (dAP and time x relative to the student alone):")
    print(table)
    print(f"\nplot: {plot}\ntotal time: {(time.time() - start) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
