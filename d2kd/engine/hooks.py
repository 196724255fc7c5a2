"""Training hooks of d2kd (besides detectron2's own)."""
import json
import logging
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
from detectron2.engine import HookBase
from detectron2.utils import comm

from .checkpoint import _atomic_write

logger = logging.getLogger(__name__)

Series = List[Tuple[int, float]]  # (iteration, value)


def read_metrics(path: str) -> List[dict]:
    """The records of a detectron2 ``metrics.json`` (one JSON object per line); bad lines skipped.

    A killed job can leave a partial last line, so parsing is per line and tolerant.
    """
    records = []
    if not os.path.isfile(path):
        return records
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def truncate_metrics(path: str, start_iter: int) -> int:
    """Rewrites ``metrics.json`` (atomically) without the records of iterations >= ``start_iter``
    (those a resumed run repeats); returns how many were dropped. Unparsable lines are dropped
    too (a killed job's partial last line)."""
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if int(record.get("iteration", -1)) < start_iter:
            kept.append(line if line.endswith("\n") else line + "\n")
    dropped = len(lines) - len(kept)
    if dropped:
        _atomic_write(path, lambda f: f.writelines(kept), mode="w")
        logger.info("Removed %d record(s) of iterations >= %d from %s (this run repeats them)",
                    dropped, start_iter, path)
    return dropped


def training_writers(output_dir: str, max_iter: int, resume_at: Optional[int] = None):
    """detectron2's ``default_writers`` (terminal, ``metrics.json``, TensorBoard) for a run that
    starts at iteration ``resume_at`` when resumed (None: a new run).

    A resumed run first cuts ``metrics.json`` back to the iterations before ``resume_at``, and
    TensorBoard hides the events of those iterations and later (``purge_step``), so neither
    holds an iteration twice. A new run cuts from iteration 0: the records of an earlier,
    unfinished run in the same folder would otherwise be read (and plotted) as its own.
    """
    from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter

    os.makedirs(output_dir, exist_ok=True)
    metrics = os.path.join(output_dir, "metrics.json")
    start_iter = 0 if resume_at is None else resume_at
    truncate_metrics(metrics, start_iter)
    return [
        CommonMetricPrinter(max_iter),
        JSONWriter(metrics),
        TensorboardXWriter(output_dir, purge_step=start_iter),
    ]


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing median over ``window`` points (what detectron2's metric printer shows)."""
    if window <= 1 or len(values) < 2:
        return values
    return np.array([np.median(values[max(0, i - window + 1): i + 1]) for i in range(len(values))])


def plot_training_curves(
    path: str, loss: Series, ap: Dict[str, Series], smoothing: int = 20, title: str = ""
) -> None:
    """Writes a PNG: smoothed total loss (left axis) and each AP metric (right axis) vs iteration.

    Written atomically, so a viewer never sees a half-written image.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    if loss:
        it, val = np.array(loss, dtype=np.float64).T
        ax.plot(it, val, color="tab:blue", alpha=0.25, linewidth=0.8)
        ax.plot(it, _smooth(val, smoothing), color="tab:blue", linewidth=1.5,
                label=f"total_loss (median of {smoothing})")
    ax.set_xlabel("iteration")
    ax.set_ylabel("total loss", color="tab:blue")
    ax.grid(alpha=0.3)
    lines, labels = ax.get_legend_handles_labels()
    if ap:
        ax2 = ax.twinx()
        colors = ["tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink"]
        for k, (name, series) in enumerate(sorted(ap.items())):
            it, val = np.array(series, dtype=np.float64).T
            ax2.plot(it, val, marker="o", linewidth=1.5, label=name,
                     color=colors[k % len(colors)])
            ax2.annotate(f"{val[-1]:.2f}", (it[-1], val[-1]), textcoords="offset points",
                         xytext=(4, 4), fontsize=8)
        ax2.set_ylabel("AP")
        l2, lab2 = ax2.get_legend_handles_labels()
        lines, labels = lines + l2, labels + lab2
    if lines:
        ax.legend(lines, labels, loc="upper right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _atomic_write(path, lambda f: fig.savefig(f, format="png"))


def _is_ap_key(key: str) -> bool:
    # "bbox/AP" from COCOEvaluator via EvalHook; also "<test set>/bbox/AP" with several test sets.
    return key.endswith("/AP")


class TrainingCurves(HookBase):
    """Plots the smoothed total loss and each evaluation's AP over iterations.

    The image is refreshed after every evaluation (run this hook after ``EvalHook``) and at the
    end of training. Values of earlier runs of the same output directory (before ``--resume``)
    come from ``metrics.json``, so a resumed run plots its whole history.

    Args:
        output_dir: where ``metrics.json`` is and the image goes.
        filename: image file name.
        smoothing: window of the trailing median of the loss curve.
    """

    def __init__(self, output_dir: str, filename: str = "training_curves.png", smoothing: int = 20):
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, filename)
        self.smoothing = int(smoothing)
        self._previous_loss: Series = []
        self._previous_ap: Dict[str, Series] = {}
        self._num_evals: Dict[str, int] = {}
        self._announced = False

    def before_train(self):
        # Records of iterations this run repeats (written by a killed run after its last
        # checkpoint) are dropped; an evaluation logged at `start` itself (the final evaluation
        # of a run whose max_iter was raised) evaluated the weights this run starts from.
        start = self.trainer.start_iter
        for rec in read_metrics(os.path.join(self.output_dir, "metrics.json")):
            it = rec.get("iteration")
            if it is None or it > start:
                continue
            if "total_loss" in rec and it < start:
                self._previous_loss.append((it, float(rec["total_loss"])))
            for k, v in rec.items():
                if _is_ap_key(k):
                    self._previous_ap.setdefault(k, []).append((it, float(v)))

    def _current(self) -> Tuple[Series, Dict[str, Series]]:
        storage = self.trainer.storage
        histories = storage.histories()
        loss = list(self._previous_loss)
        # A resumed run's storage also holds the last values before its start (restored for the
        # smoothing windows, see d2kd.engine.resume): those come from metrics.json already.
        start = self.trainer.start_iter
        if "total_loss" in histories:
            loss += [(int(i), float(v)) for v, i in histories["total_loss"].values() if i >= start]
        ap = {k: list(v) for k, v in self._previous_ap.items()}
        for k, h in histories.items():
            if _is_ap_key(k):
                ap.setdefault(k, []).extend((int(i), float(v)) for v, i in h.values() if i >= start)
        return loss, ap

    def write(self) -> Optional[str]:
        """Redraws the image now; returns its path (None on non-main processes)."""
        if not comm.is_main_process():
            return None
        loss, ap = self._current()
        if not loss and not ap:
            return None
        plot_training_curves(self.path, loss, ap, self.smoothing,
                             title=os.path.basename(os.path.abspath(self.output_dir)))
        if not self._announced:
            logger.info("Training curves (loss and AP) are plotted to %s", self.path)
            self._announced = True
        return self.path

    def after_step(self):
        histories = self.trainer.storage.histories()
        counts = {k: len(h.values()) for k, h in histories.items() if _is_ap_key(k)}
        if counts != self._num_evals:
            self._num_evals = counts
            self.write()

    def after_train(self):
        path = self.write()
        if path:
            logger.info("Wrote training curves to %s", path)


class GradientClipping(HookBase):
    """Clips the global gradient norm of the trained parameters before each optimizer step.

    Runs in ``after_backward`` (after DDP's all-reduce, so every process clips alike). Under
    AMP the gradients are unscaled first, as ``torch.amp`` prescribes. The norm before clipping
    is logged as ``grad_norm``. DETR-style training needs it (max norm 0.1); detectors trained
    from scratch use it to survive the first iterations.

    Args:
        max_norm: the norm the gradients are clipped to.
        norm_type: the p of the p-norm (``inf`` for the max norm).
    """

    def __init__(self, max_norm: float, norm_type: float = 2.0):
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)

    def after_backward(self):
        import torch

        trainer = self.trainer
        scaler = getattr(trainer, "grad_scaler", None)
        if scaler is not None and scaler.is_enabled():
            scaler.unscale_(trainer.optimizer)
        params = [p for group in trainer.optimizer.param_groups for p in group["params"]
                  if p.grad is not None]
        if not params:
            return
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm, self.norm_type)
        trainer.storage.put_scalar("grad_norm", float(norm), smoothing_hint=True)
