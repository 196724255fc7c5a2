"""Distillation benchmark on the built-in shapes data: what each method adds to a student's COCO AP,
and what it costs per training step.

    python benchmarks/kd_gain.py --dry-run                 # the planned runs and their commands
    python benchmarks/kd_gain.py --only core               # the 2-seed homogeneous rows
    python benchmarks/kd_gain.py --only ablation           # the other homogeneous rows (first seed)
    python benchmarks/kd_gain.py --only heterogeneous      # DINO -> Faster R-CNN R-18 (the demo's runs)
    python benchmarks/kd_gain.py --only core --rows "student alone,KD-DETR (both)" --iters 400
    python benchmarks/kd_gain.py --tiny --iters 4 --teacher-iters 4 --absorb-iters 4   # smoke run

Every training is a ``train_net.py`` child run by :mod:`d2kd.tools.experiment` and evaluated at
its end on ``d2kd_shapes_val``. A run that finished before with the same key is reused: an
interrupted benchmark resumes where it stopped, and adding a seed trains only the runs of that
seed. The students all train for ``--iters`` (one fixed schedule). The DINO R-50 teacher is the
demo's (``--teacher-root``, default ./output/builtin: one teacher for the demo and every part);
the Faster R-CNN R-50 teacher and UniKD's stage 1 are trained once (seed 0).

1. Homogeneous, the shape of the KD-DETR / DETRDistill tables: DINO R-50 -> DINO R-18
   (configs/detr/dino_R18_builtin.py). ``core`` (every seed): the student alone, KD-DETR (both
   groups; the published method, configs/kd_detr/dino_R50_to_R18_builtin.py), DETRDistill
   (LD + FD + AD). ``ablation`` (first seed): FitNet; the paper's KD-DETR ablation on the
   published method: general / + reweight / specific / + reweight; d2kd's KD-DETR variant, both
   groups (configs/kd_detr/dino_R50_to_R18_variant_builtin.py); DETRDistill LD, FD, AD alone.
   After the runs, the teacher's forward time is measured in this process for the speed
   criterion.
2. Heterogeneous: KD-DETR DINO R-50 -> Faster R-CNN R-18 and the student alone, at every seed;
   these are the demo's runs (same folders, same keys), so each reuses the other.
3. Universality (``--only universality``), the shape of UniKD's Tab. 2: students Faster R-CNN
   R-18, RetinaNet R-18, Deformable DETR R-18, alone and distilled with UniKD from each teacher,
   DINO R-50 and Faster R-CNN R-50 (each teacher's UniKD stage 1,
   configs/unikd/*_absorb_builtin.py, ``--absorb-iters``; stage 2 is configs/unikd/<teacher>_to_
   <student>_builtin.py). Plus offline vs online for DINO -> Faster R-CNN: the knowledge is
   dumped once (``python -m d2kd.tools.dump_knowledge``, a step of the sequence, reused when its
   store is complete) and configs/unikd/dino_to_frcnn_R18_offline_builtin.py trains from it.

How long, on 2 cores at 192 px (measured): DINO R-18 0.55 s/iter alone, Faster R-CNN R-18 0.73,
KD-DETR DINO -> Faster R-CNN 1.82, the DINO R-50 teacher 1.63. ``--dry-run`` prints the plan with
an estimate from the priors, and the sequence prints its ETA as it goes.

Reading the output (printed, and written to ``<output>/kd_gain_<part>.{md,png}``):
each table cell is the mean over the seeds followed by the seeds' own values in parentheses;
``dAP`` is the AP gain over the student alone of the same seed, ``time x`` the seconds per
training iteration as a multiple of the student alone's. Then the issue's two criteria, each
PASS/FAIL: (1) KD-DETR (both) and DETRDistill (all) gain >= +2.0 AP over the student alone (mean
of the seeds) and beat FitNet; (2) every distilled step costs at most the student's step plus the
teacher's forward plus 15% of the student's step. A schedule that short leaves every number noisy
and the teacher far from converged: read the gains at the defaults or longer, never at --tiny.
"""
import argparse
import dataclasses
import hashlib
import math
import os
import shlex
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from d2kd.tools import demo  # noqa: E402
from d2kd.tools.experiment import (  # noqa: E402
    RESULT_FILE,
    Run,
    RunResult,
    RunSequence,
    format_seed_table,
    load_result,
    mean_result,
    result_from_metrics,
    save_result,
)

TINY = ("dataloader.train.dataset.names=d2kd_shapes_tiny_train",
        "dataloader.test.dataset.names=d2kd_shapes_tiny_val", "train.log_period=1")
# evaluate once, at the end; no intermediate checkpoints
QUIET = ("train.eval_period=0", "train.checkpointer.period=100000")

KD_DETR = "configs/kd_detr/dino_R50_to_R18_builtin.py"
KD_DETR_VARIANT = "configs/kd_detr/dino_R50_to_R18_variant_builtin.py"
STUDENT = "student alone"
_OFF_G, _OFF_S = "model.losses.kd_detr.general_weight=0", "model.losses.kd_detr.specific_weight=0"
_NO_FW = "model.losses.kd_detr.foreground_weighting=False"
# (row, config, overrides, prior seconds per iteration on a 2-core CPU for the ETA, part): the
# "core" rows run at every seed, the "ablation" rows at the first seed only.
HOMOGENEOUS = [
    (STUDENT, "configs/detr/dino_R18_builtin.py", (), 0.45, "core"),
    ("KD-DETR (both)", KD_DETR, (), 1.1, "core"),
    ("DETRDistill (all)", "configs/detrdistill/dino_R50_to_R18_builtin.py", (), 1.2, "core"),
    ("FitNet", "configs/fitnet/dino_R50_to_R18_builtin.py", (), 0.9, "ablation"),
    # the paper's ablation on the published method: general / +reweight / specific / +reweight
    ("KD-DETR (general)", KD_DETR, (_OFF_S, _NO_FW), 0.9, "ablation"),
    ("KD-DETR (general + reweight)", KD_DETR, (_OFF_S,), 0.9, "ablation"),
    ("KD-DETR (specific)", KD_DETR, (_OFF_G, _NO_FW), 1.0, "ablation"),
    ("KD-DETR (specific + reweight)", KD_DETR, (_OFF_G,), 1.0, "ablation"),
    ("KD-DETR variant (both)", KD_DETR_VARIANT, (), 1.1, "ablation"),
    ("DETRDistill (LD)", "configs/detrdistill/dino_R50_to_R18_ld_builtin.py", (), 1.0, "ablation"),
    ("DETRDistill (FD)", "configs/detrdistill/dino_R50_to_R18_fd_builtin.py", (), 1.0, "ablation"),
    ("DETRDistill (AD)", "configs/detrdistill/dino_R50_to_R18_ad_builtin.py", (), 1.1, "ablation"),
]
# The heterogeneous row (KD-DETR's DINO -> Faster R-CNN), the demo's runs at every seed.
HETERO_STUDENT = "Faster R-CNN R-18 alone"
HETERO = [
    (HETERO_STUDENT, "configs/baselines/faster_rcnn_R18_fpn_builtin.py", (), 0.45),
    ("Faster R-CNN R-18 + KD-DETR", "configs/kd_detr/dino_to_frcnn_builtin.py", (), 1.0),
]
# key: (label, teacher config, UniKD stage-1 config, prior s/iter of the teacher, of its stage 1)
TEACHERS = {
    "dino": ("DINO R-50", "configs/detr/dino_R50_builtin.py", "configs/unikd/dino_R50_absorb_builtin.py", 1.6, 1.6),
    "frcnn": ("Faster R-CNN R-50", "configs/baselines/faster_rcnn_R50_fpn_builtin.py",
              "configs/unikd/frcnn_R50_absorb_builtin.py", 1.0, 1.5),
}
# key: (label, baseline config, prior s/iter alone)
STUDENTS = {
    "frcnn_R18": ("Faster R-CNN R-18", "configs/baselines/faster_rcnn_R18_fpn_builtin.py", 0.5),
    "retinanet_R18": ("RetinaNet R-18", "configs/baselines/retinanet_R18_fpn_builtin.py", 0.6),
    "deformable_detr_R18": ("Deformable DETR R-18", "configs/detr/deformable_detr_R18_builtin.py", 0.8),
}
UNIKD = {
    ("dino", "frcnn_R18"): "configs/unikd/dino_to_frcnn_R18_builtin.py",
    ("dino", "retinanet_R18"): "configs/unikd/dino_to_retinanet_R18_builtin.py",
    ("dino", "deformable_detr_R18"): "configs/unikd/dino_to_deformable_detr_R18_builtin.py",
    ("frcnn", "frcnn_R18"): "configs/unikd/frcnn_R50_to_frcnn_R18_builtin.py",
    ("frcnn", "retinanet_R18"): "configs/unikd/frcnn_R50_to_retinanet_R18_builtin.py",
    ("frcnn", "deformable_detr_R18"): "configs/unikd/frcnn_R50_to_deformable_detr_R18_builtin.py",
}
OFFLINE_CONFIG = "configs/unikd/dino_to_frcnn_R18_offline_builtin.py"
OFFLINE_CELL = ("dino", "frcnn_R18")
UNIKD_PRIOR = 1.3  # s/iter a UniKD student adds over its baseline (teacher forward + AKEs)


@dataclasses.dataclass
class KnowledgeDump(Run):
    """``python -m d2kd.tools.dump_knowledge`` as a step of the sequence: the knowledge store of
    ``config`` written into ``store``; ``output_dir`` holds its log. Produces no result row; a
    complete store is reused (its directory name is a digest of the config and overrides)."""

    store: str = ""

    def argv(self) -> List[str]:
        config = self.config if os.path.isabs(self.config) else os.path.join(ROOT, self.config)
        resume = ["--resume"] if os.path.isfile(os.path.join(self.store, "store.json")) else []
        return [sys.executable, "-m", "d2kd.tools.dump_knowledge", "--config-file", config,
                "--output", self.store, *resume, *self.overrides]

    def done(self) -> bool:
        from d2kd.offline import KnowledgeStore, KnowledgeStoreError

        try:
            KnowledgeStore(self.store, verify="size")
        except KnowledgeStoreError:
            return False
        return True


class BenchSequence(RunSequence):
    """:class:`RunSequence` whose steps may also be :class:`KnowledgeDump` s."""

    def run(self) -> List[RunResult]:
        results = []
        for index, step in enumerate(self.runs):
            header = f"[{self.title} {index + 1}/{len(self.runs)} {step.name}]"
            if isinstance(step, KnowledgeDump):
                if step.done():
                    print(f"{header} reusing the store {step.store}", flush=True)
                    continue
                self._train(index, step)
                if not step.done():
                    raise RuntimeError(f"{header} finished without a complete store in {step.store}")
                continue
            result = load_result(step)
            if result is not None:
                print(f"{header} reusing {step.output_dir} (AP {result.ap['AP']:.1f})", flush=True)
            else:
                self._train(index, step)
                result = result_from_metrics(step)
                save_result(step, result)
            results.append(result)
        return results


def _digest(items: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:8]


class Plan:
    """The runs of the benchmark, each once (the DINO teacher serves both parts)."""

    def __init__(self, args):
        self.args = args
        self.extra = tuple(args.extra)
        # Runs with other extra overrides (e.g. --tiny) live in their own directories, so they
        # never overwrite a real run (nor a store dumped from its teacher).
        self.root = os.path.abspath(args.output)
        self.tag = f"_x{_digest(self.extra)}" if self.extra else ""
        self.steps: List[Run] = []

    def add(self, step: Run) -> Run:
        for existing in self.steps:
            if existing.output_dir == step.output_dir:
                return existing
        self.steps.append(step)
        return step

    def _dir(self, *parts: str) -> str:
        return os.path.join(self.root, *parts[:-1], parts[-1] + self.tag)

    def teacher(self, key: str) -> Run:
        label, config, _, prior, _ = TEACHERS[key]
        it = self.args.teacher_iters
        if key == "dino":  # the demo's teacher, shared with it (same folder, same key)
            run = demo.teacher_run(self.args.teacher_root, it)
            run.output_dir += self.tag
            run.overrides = tuple(run.overrides) + self.extra
            return self.add(run)
        return self.add(Run(f"teacher {label}", config, self._dir("teachers", f"{key}_R50_{it}it"), it,
                            QUIET + ("train.seed=0",) + self.extra, prior,
                            depends_on=(demo.backbone_files()[50],)))

    def absorb(self, key: str) -> Run:
        label, _, config, _, prior = TEACHERS[key]
        teacher, it = self.teacher(key), self.args.absorb_iters
        return self.add(Run(f"UniKD stage 1 on {label}", config,
                            self._dir("absorb", f"{key}_R50_{it}it_T{self.args.teacher_iters}"), it,
                            QUIET + ("train.seed=0", f"model.teacher.weights={teacher.output_dir}/model_final.pth")
                            + self.extra, prior))

    def student(self, name: str, config: str, out: str, seed: int, overrides: Sequence[str], prior: float,
                depends_on: Sequence[str] = ()) -> Run:
        return self.add(Run(f"{name} [seed {seed}]", config, self._dir(out + f"_{self.args.iters}it_seed{seed}"),
                            self.args.iters, QUIET + (f"train.seed={seed}",) + tuple(overrides) + self.extra,
                            prior, depends_on=(demo.backbone_files()[18],) + tuple(depends_on)))

    def homogeneous(self, parts: Sequence[str] = ("core", "ablation")) -> Dict[str, List[Run]]:
        """``{row: [run per seed]}``, the teacher's row first; the core rows at every seed, the
        ablation rows at the first seed."""
        teacher = self.teacher("dino")
        rows: Dict[str, List[Run]] = {teacher.name: [teacher]}
        weights = f"model.teacher.weights={teacher.output_dir}/model_final.pth"
        teacher_key = os.path.join(teacher.path, RESULT_FILE)
        for seed in self.args.seeds:
            for name, config, overrides, prior, part in HOMOGENEOUS:
                if part not in parts or (part == "ablation" and seed != self.args.seeds[0]):
                    continue
                if self.args.rows and name not in self.args.rows:
                    continue
                slug = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
                while "__" in slug:
                    slug = slug.replace("__", "_")
                if name == STUDENT:
                    out, ov, deps = "homogeneous/dino_R18_alone", overrides, ()
                else:
                    out, ov, deps = f"homogeneous/{slug}_T{self.args.teacher_iters}", (weights,) + overrides, \
                        (teacher_key,)
                rows.setdefault(name, []).append(self.student(name, config, out, seed, ov, prior, deps))
        return rows

    def heterogeneous(self) -> Dict[str, List[Run]]:
        """KD-DETR DINO R-50 -> Faster R-CNN R-18: the demo's student runs, at every seed."""
        teacher = self.teacher("dino")
        rows: Dict[str, List[Run]] = {teacher.name: [teacher]}
        for seed in self.args.seeds:
            runs = demo.build_runs(self.args.teacher_root, self.args.teacher_iters,
                                   self.args.iters, seed)[1:]
            for (name, *_rest), run in zip(HETERO, runs):
                run.name = f"{name} [seed {seed}]"
                run.output_dir += self.tag
                run.overrides = tuple(o if not o.startswith("model.teacher.weights=") else
                                      f"model.teacher.weights={teacher.output_dir}/model_final.pth"
                                      for o in run.overrides) + self.extra
                rows.setdefault(name, []).append(self.add(run))
        return rows

    def unikd_overrides(self, key: str) -> Tuple[str, ...]:
        return (f"model.teacher.weights={self.teacher(key).output_dir}/model_final.pth",
                f"model.losses.unikd.ake.weights={self.absorb(key).output_dir}/model_final.pth")

    def universality(self) -> Dict[str, object]:
        """``{"alone": {student: [runs]}, "unikd": {(teacher, student): [runs]}, "teachers": {key:
        run}, "offline": [runs], "store": path}``."""
        a = self.args
        alone: Dict[str, List[Run]] = {}
        unikd: Dict[Tuple[str, str], List[Run]] = {}
        teachers = {key: self.teacher(key) for key in TEACHERS}
        for key in TEACHERS:
            self.absorb(key)
        for seed in a.seeds:
            for s_key, (label, config, prior) in STUDENTS.items():
                alone.setdefault(s_key, []).append(
                    self.student(f"{label} alone", config, f"universality/{s_key}_alone", seed, (), prior))
                for t_key, (t_label, *_rest) in TEACHERS.items():
                    out = f"universality/unikd_{t_key}_to_{s_key}_T{a.teacher_iters}_A{a.absorb_iters}"
                    unikd.setdefault((t_key, s_key), []).append(self.student(
                        f"{label} + UniKD from {t_label}", UNIKD[(t_key, s_key)], out, seed,
                        self.unikd_overrides(t_key), prior + UNIKD_PRIOR))
        # offline vs online (DINO -> Faster R-CNN R-18): dump once, then train from the store
        t_key, s_key = OFFLINE_CELL
        dump_overrides = self.unikd_overrides(t_key) + self.extra
        key = f"unikd_dino_to_frcnn_R18_{_digest((OFFLINE_CONFIG,) + dump_overrides)}"
        store = os.path.join(self.root, "knowledge", key, "store")
        images = 64 if any("tiny" in o for o in self.extra) else 2000
        self.add(KnowledgeDump("dump UniKD knowledge (DINO R-50)", OFFLINE_CONFIG,
                               os.path.join(self.root, "knowledge", key), 1, dump_overrides,
                               sec_per_iter=0.4 * 2 * images, store=store))
        offline = [self.student(f"{STUDENTS[s_key][0]} + UniKD from DINO R-50, offline", OFFLINE_CONFIG,
                                f"universality/unikd_{t_key}_to_{s_key}_offline_"
                                f"T{a.teacher_iters}_A{a.absorb_iters}", seed,
                                self.unikd_overrides(t_key) + (f"model.teacher.store={store}",
                                                               f"dataloader.train.store={store}"),
                                STUDENTS[s_key][2] + 0.3)
                   for seed in a.seeds]
        return {"alone": alone, "unikd": unikd, "teachers": teachers, "offline": offline, "store": store}


# ------------------------------------------------------------------------------------ measures
def teacher_forward_seconds(config: str, weights: str, overrides: Sequence[str], batches: int = 5) -> float:
    """Median seconds of the teacher's eval-mode, no-grad forward on a train-loader batch, in
    this process, with train_net's thread count (the first batch is a warm-up)."""
    import torch
    from detectron2.config import instantiate

    from d2kd.engine.config import load_config, register_builtin_datasets
    from d2kd.engine.launch import configure_threads
    from d2kd.meta_arch import FrozenTeacher

    register_builtin_datasets()
    cfg = load_config(os.path.join(ROOT, config), overrides)
    configure_threads(int(cfg.train.get("num_threads", 0) or 0))
    cfg.dataloader.train.num_workers = 0
    device = torch.device(cfg.train.device)
    teacher = FrozenTeacher(instantiate(cfg.model), weights).to(device)  # loads, eval, no_grad
    loader = iter(instantiate(cfg.dataloader.train))
    times = []
    for _ in range(batches + 1):
        batch = next(loader)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        teacher(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def store_bytes(store: str) -> Tuple[float, int]:
    """``(bytes per image-view, views per image)`` of a knowledge store (all methods + records)."""
    from d2kd.offline import KnowledgeStore

    opened = KnowledgeStore(store, verify="size")
    return sum(opened.bytes_per_item().values()), int(opened.plan["num_views"])


# ------------------------------------------------------------------------------------ reports
def _results(runs: List[Run], by_dir: Dict[str, RunResult]) -> List[RunResult]:
    return [by_dir[r.path] for r in runs]


def criteria(rows: Dict[str, List[RunResult]], teacher_forward: float) -> List[str]:
    """The issue's two criteria as report lines."""
    mean = {name: mean_result(name, results) for name, results in rows.items()}
    base, fitnet = mean[STUDENT], mean["FitNet"]
    lines = ["Criterion 1: >= +2.0 AP over the student alone (mean of the seeds) and ahead of FitNet "
             f"(student {base.ap['AP']:.1f}, FitNet {fitnet.ap['AP']:.1f} AP):"]
    for name in ("KD-DETR (both)", "DETRDistill (all)"):
        gain = mean[name].ap["AP"] - base.ap["AP"]
        ok = gain >= 2.0 and mean[name].ap["AP"] > fitnet.ap["AP"]
        lines.append(f"  {name}: {mean[name].ap['AP']:.1f} AP, {gain:+.1f} over the student, "
                     f"{mean[name].ap['AP'] - fitnet.ap['AP']:+.1f} over FitNet -> {'PASS' if ok else 'FAIL'}")
    bound = base.sec_per_iter * 1.15 + teacher_forward
    if math.isnan(bound):
        return lines + ["Criterion 2: n/a, the runs have no step time (detectron2's IterationTimer skips "
                        "the first 3 iterations: train at least 4)"]
    lines.append(f"Criterion 2: distilled s/iter <= student {base.sec_per_iter:.3f} + teacher forward "
                 f"{teacher_forward:.3f} + 15% of the student = {bound:.3f} s/iter:")
    for name, r in mean.items():
        if name in (STUDENT,) or name.startswith("teacher"):
            continue
        lines.append(f"  {name}: {r.sec_per_iter:.3f} s/iter "
                     f"(+{r.sec_per_iter - base.sec_per_iter:.3f} over the student) -> "
                     f"{'PASS' if r.sec_per_iter <= bound else 'FAIL'}")
    return lines


def universality_table(uni: Dict[str, object], by_dir: Dict[str, RunResult]) -> str:
    """UniKD Tab. 2: rows students, columns teachers, cells alone AP -> UniKD AP (gain), means."""
    teachers = uni["teachers"]
    head = ["student \\ teacher", "alone"] + [
        f"{TEACHERS[k][0]} ({by_dir[teachers[k].path].ap['AP']:.1f} AP)" for k in TEACHERS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s_key, (label, *_rest) in STUDENTS.items():
        base = mean_result(label, _results(uni["alone"][s_key], by_dir)).ap["AP"]
        row = [label, f"{base:.1f}"]
        for t_key in TEACHERS:
            ap = mean_result(label, _results(uni["unikd"][(t_key, s_key)], by_dir)).ap["AP"]
            row.append(f"{base:.1f} -> {ap:.1f} ({ap - base:+.1f})")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(path: str, homo: Optional[Dict[str, List[RunResult]]], uni_rows: Optional[Dict[str, List[float]]]) -> str:
    """AP per method (mean bar, one dot per seed), AP gain vs step-time ratio, UniKD cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from d2kd.engine.checkpoint import _atomic_write

    panels = (2 if homo else 0) + (1 if uni_rows else 0)
    if not panels:  # e.g. a part run without its reference row: nothing to plot
        return ""
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.8), squeeze=False)
    axes = list(axes[0])
    if homo:
        ax = axes.pop(0)
        names = list(homo)
        for i, name in enumerate(names):
            aps = [r.ap["AP"] for r in homo[name]]
            ax.bar(i, statistics.fmean(aps), color="tab:gray" if name.startswith("teacher") else "tab:blue")
            ax.plot([i] * len(aps), aps, "k.", ms=6)
        ax.axhline(mean_result(STUDENT, homo[STUDENT]).ap["AP"], color="tab:red", ls="--", lw=1)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("COCO box AP (val)")
        ax.set_title("DINO R-50 -> R-18 (dots: seeds; dashed: student alone)")
        ax = axes.pop(0)
        base = mean_result(STUDENT, homo[STUDENT])
        for name, results in homo.items():
            if name == STUDENT or name.startswith("teacher"):
                continue
            m = mean_result(name, results)
            ax.scatter(m.sec_per_iter / base.sec_per_iter, m.ap["AP"] - base.ap["AP"])
            ax.annotate(name, (m.sec_per_iter / base.sec_per_iter, m.ap["AP"] - base.ap["AP"]), fontsize=7)
        ax.axhline(2.0, color="tab:red", ls="--", lw=1)
        ax.set_xlabel("s/iter relative to the student alone")
        ax.set_ylabel("AP gain over the student alone")
        ax.set_title("gain vs training cost (dashed: +2.0 AP)")
    if uni_rows:
        ax = axes.pop(0)
        width = 0.8 / len(next(iter(uni_rows.values())))
        labels = ["alone"] + [f"from {TEACHERS[k][0]}" for k in TEACHERS]
        for j, label in enumerate(labels):
            ax.bar([i + j * width for i in range(len(uni_rows))], [v[j] for v in uni_rows.values()], width,
                   label=label)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(uni_rows))])
        ax.set_xticklabels(list(uni_rows), fontsize=8)
        ax.set_ylabel("COCO box AP (val), mean of the seeds")
        ax.set_title("UniKD: any teacher -> any student")
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------ main
PARTS = ("core", "ablation", "homogeneous", "heterogeneous", "universality", "all")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--iters", type=int, default=1000, help="training iterations of every student run")
    p.add_argument("--teacher-iters", type=int, default=3000, help="of the teachers (trained once, seed 0)")
    p.add_argument("--absorb-iters", type=int, default=1500, help="of UniKD's stage 1 on each teacher")
    p.add_argument("--seeds", default="0,1", help="comma-separated train.seed values of the student runs")
    p.add_argument("--only", choices=PARTS, default="all",
                   help="core: the 2-seed homogeneous rows; ablation: the other homogeneous rows (first "
                        "seed); homogeneous: both; heterogeneous: DINO -> Faster R-CNN R-18; universality")
    p.add_argument("--rows", default="", help="comma-separated homogeneous row names to run (default: all "
                   "of the part), e.g. 'student alone,KD-DETR (both)'")
    p.add_argument("--teacher-root", default="./output/builtin",
                   help="where the DINO teacher lives (shared with the demo)")
    p.add_argument("--output", default="./output/kd_gain")
    p.add_argument("--teacher-batches", type=int, default=5, help="batches timed for the teacher's forward")
    p.add_argument("--dry-run", action="store_true", help="print the planned runs and commands, train nothing")
    p.add_argument("--tiny", action="store_true", help="train and evaluate on the tiny data (smoke run)")
    p.add_argument("--extra", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides passed to every run (and to the knowledge dump)")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in [row[0] for row in HOMOGENEOUS]]
    if unknown:
        p.error(f"unknown --rows {unknown}; rows: {[row[0] for row in HOMOGENEOUS]}")
    if not args.seeds:
        p.error("--seeds needs at least one seed")
    if args.tiny:
        args.extra = list(TINY) + [o for o in args.extra if o not in TINY]
    return args


def print_plan(steps: Sequence[Run]) -> None:
    total = 0.0
    for i, step in enumerate(steps):
        if isinstance(step, KnowledgeDump):
            status = "reuse" if step.done() else "dump"
        else:
            status = "reuse" if load_result(step) is not None else "train"
        seconds = 0.0 if status == "reuse" else step.max_iter * step.sec_per_iter
        total += seconds
        print(f"[{i + 1}/{len(steps)}] {step.name}: {status}"
              + (f", ~{seconds / 60:.0f} min" if seconds else ""))
        print("    " + shlex.join(step.argv()))
    print(f"\n{len(steps)} steps; estimated {total / 3600:.1f} h at the 2-core-CPU priors")


def main(argv=None) -> int:
    args = parse_args(argv)
    for key, value in (("OMP_WAIT_POLICY", "PASSIVE"), ("MALLOC_MMAP_MAX_", "0"),
                       ("MALLOC_TRIM_THRESHOLD_", "1000000000000")):
        os.environ.setdefault(key, value)
    start = time.time()
    plan = Plan(args)
    homo_parts = {"core": ("core",), "ablation": ("ablation",), "homogeneous": ("core", "ablation"),
                  "all": ("core", "ablation")}.get(args.only, ())
    homo_runs = plan.homogeneous(homo_parts) if homo_parts else None
    hetero_runs = plan.heterogeneous() if args.only in ("heterogeneous", "all") else None
    uni = plan.universality() if args.only in ("universality", "all") else None
    print(f"kd_gain: {len(plan.steps)} steps, students at {args.iters} iterations, seeds {args.seeds}, "
          f"output in {plan.root}" + (f"; extra overrides {args.extra}" if args.extra else ""), flush=True)
    if args.iters < 4 or args.teacher_iters < 4:
        print("note: runs of fewer than 4 iterations record no step time (s/iter is nan)", flush=True)
    if args.dry_run:
        print_plan(plan.steps)
        return 0

    results = BenchSequence(plan.steps, title="kd_gain").run()
    by_dir = {r.output_dir: r for r in results}
    report: List[str] = []
    homo = uni_rows = None
    if homo_runs:
        homo = {name: _results(runs, by_dir) for name, runs in homo_runs.items()}
        teacher = homo_runs[next(iter(homo_runs))][0]
        data = [o for o in args.extra if o.startswith("dataloader.")]
        print("\nTiming the teacher's forward in this process ...", flush=True)
        forward = teacher_forward_seconds(teacher.config, f"{teacher.path}/model_final.pth", data,
                                          args.teacher_batches)
        report += [f"## Homogeneous: DINO R-50 -> DINO R-18, {args.iters} iterations, seeds {args.seeds}",
                   "", format_seed_table(homo, reference=STUDENT if STUDENT in homo else None), "",
                   f"Teacher ({args.teacher_iters} iterations, seed 0): forward {forward:.3f} s per batch "
                   f"(in-process median of {args.teacher_batches}).", ""]
        if STUDENT in homo and "FitNet" in homo:
            report += [*criteria(homo, forward), ""]
    if hetero_runs:
        hetero = {name: _results(runs, by_dir) for name, runs in hetero_runs.items()}
        report += [f"## Heterogeneous: KD-DETR DINO R-50 -> Faster R-CNN R-18, {args.iters} iterations, "
                   f"seeds {args.seeds}", "", format_seed_table(hetero, reference=HETERO_STUDENT), ""]
    if uni:
        alone = {STUDENTS[k][0]: _results(v, by_dir) for k, v in uni["alone"].items()}
        cells = {f"{STUDENTS[s][0]} + UniKD from {TEACHERS[t][0]}": _results(v, by_dir)
                 for (t, s), v in uni["unikd"].items()}
        teachers = {f"teacher {TEACHERS[k][0]}": [by_dir[r.path]] for k, r in uni["teachers"].items()}
        uni_rows = {label: [mean_result(label, alone[label]).ap["AP"]] + [
            mean_result(label, _results(uni["unikd"][(t, s)], by_dir)).ap["AP"] for t in TEACHERS]
            for s, (label, *_rest) in STUDENTS.items()}
        online = _results(uni["unikd"][OFFLINE_CELL], by_dir)
        offline = _results(uni["offline"], by_dir)
        per_view, views = store_bytes(uni["store"])
        report += [f"## Universality (UniKD Tab. 2): {args.iters} iterations, seeds {args.seeds}, "
                   "AP alone -> distilled (gain), means of the seeds", "", universality_table(uni, by_dir), "",
                   "All runs (cells: mean (per seed)):", "",
                   format_seed_table({**teachers, **alone, **cells}), "",
                   "## UniKD DINO R-50 -> Faster R-CNN R-18, online vs offline (knowledge store)", "",
                   format_seed_table({"online": online, "offline": offline}, reference="online"), "",
                   f"Store {uni['store']}: {per_view:,.0f} bytes per image-view, {views} views per image = "
                   f"{per_view * views:,.0f} bytes per image.", ""]
    text = "\n".join(report)
    md = os.path.join(plan.root, f"kd_gain_{args.only}.md")
    os.makedirs(plan.root, exist_ok=True)
    with open(md, "w") as f:
        f.write(text)
    png = plot(os.path.join(plan.root, f"kd_gain_{args.only}.png"), homo if homo and STUDENT in homo else None, uni_rows)
    print("\n" + text)
    print(f"tables: {md}\nplot: {png}\ntotal time: {(time.time() - start) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
