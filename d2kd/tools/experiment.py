"""Runs a sequence of ``train_net.py`` trainings and tabulates their COCO AP and speed.

Shared by the demo (``python -m d2kd.tools.demo``) and ``benchmarks/kd_gain.py``. Each run is a
child ``train_net.py`` process (so a crash in one run names its log and stops the sequence) whose
output goes to ``<output_dir>/train_net.log``; progress lines with the run's and the whole
sequence's ETA are printed while it trains. A finished run leaves ``<output_dir>/d2kd_run.json``
(written atomically) with its AP and seconds per iteration; a later sequence reuses it instead of
training again when the run's key is unchanged: the config path, iterations and overrides, the
code of the config file and of every config file it imports (its syntax tree: editing a config
retrains the runs that use it, editing its comments does not), and the identity of the files the run depends on (``Run.depends_on``: the
pretrained backbone, by the sha256 in its manifest; a teacher run, by its own key).
"""
import ast
import dataclasses
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
import warnings
from typing import Dict, List, Optional, Sequence, Set

# detectron2 still calls torch.jit.script at import time; the deprecation notice is noise here.
warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
from d2kd.engine.checkpoint import _atomic_write, sha256_file
from d2kd.engine.hooks import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULT_FILE = "d2kd_run.json"
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_ITER_LINE = re.compile(r"eta: (\S+)\s+iter: (\d+)")
_RELATIVE_IMPORT = re.compile(r"^\s*from\s+(\.+)([\w.]*)\s+import\s+(.+)$", re.M)


def config_sources(path: str, seen: Optional[Set[str]] = None) -> List[str]:
    """``path`` and every config file it imports by relative import, recursively (sorted)."""
    seen = set() if seen is None else seen
    path = os.path.abspath(path)
    if path in seen or not os.path.isfile(path):
        return sorted(seen)
    seen.add(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for dots, module, names in _RELATIVE_IMPORT.findall(text):
        base = os.path.dirname(path)
        for _ in range(len(dots) - 1):
            base = os.path.dirname(base)
        target = os.path.join(base, *module.split(".")) if module else base
        candidates = [target + ".py", os.path.join(target, "__init__.py")]
        if not module:  # `from . import x`: x is a file of this folder
            candidates = [os.path.join(base, n.strip().split(" ")[0] + ".py") for n in names.split(",")]
        for c in candidates:
            config_sources(c, seen)
    return sorted(seen)


def file_identity(path: str) -> str:
    """What a run depending on ``path`` is keyed by: a built-in backbone's manifest sha256, a
    finished run's own key (its ``d2kd_run.json``), else the sha256 of the file; "missing"."""
    manifest = os.path.splitext(path)[0] + ".json"
    try:
        if os.path.basename(path) == RESULT_FILE:
            with open(path) as f:
                return json.load(f)["fingerprint"]
        if path.endswith(".pth") and os.path.isfile(manifest):
            with open(manifest) as f:
                return json.load(f)["sha256"]
        return sha256_file(path)
    except (OSError, KeyError, json.JSONDecodeError):
        return "missing"


@dataclasses.dataclass
class Run:
    """One training: a row of the result table.

    Args:
        name: row label.
        config: config file, relative to the repository root or absolute.
        output_dir: where train_net writes (``train.output_dir``); a relative path is relative to
            the repository root (where the children run), whatever the caller's directory, and
            stays relative in the overrides, so that runs keyed by it match across clones.
        max_iter: training length (``train.max_iter``).
        overrides: further ``key=value`` overrides.
        sec_per_iter: a prior for the ETA before the run has measured its own speed.
        depends_on: files whose identity enters the run's key (:func:`file_identity`), e.g. the
            pretrained backbone it starts from and the ``d2kd_run.json`` of its teacher's run.
    """

    name: str
    config: str
    output_dir: str
    max_iter: int
    overrides: Sequence[str] = ()
    sec_per_iter: float = 1.0
    depends_on: Sequence[str] = ()

    @property
    def path(self) -> str:
        """``output_dir`` as an absolute path."""
        return os.path.join(ROOT, self.output_dir)

    def argv(self) -> List[str]:
        config = self.config if os.path.isabs(self.config) else os.path.join(ROOT, self.config)
        return [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", config,
                f"train.output_dir={self.output_dir}", f"train.max_iter={self.max_iter}",
                *self.overrides]

    def fingerprint(self) -> str:
        config = self.config if os.path.isabs(self.config) else os.path.join(ROOT, self.config)
        sources = hashlib.sha256()
        for path in config_sources(config):
            with open(path, encoding="utf-8") as f:
                # the syntax tree, so that editing comments or layout keeps finished runs
                sources.update(ast.dump(ast.parse(f.read())).encode())
        key = json.dumps([self.config, self.max_iter, list(self.overrides), sources.hexdigest(),
                          [file_identity(p) for p in self.depends_on]])
        return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclasses.dataclass
class RunResult:
    name: str
    ap: Dict[str, float]  # AP_KEYS -> value in percent
    sec_per_iter: float  # median over the second half of training
    output_dir: str
    reused: bool = False


def _fmt_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def result_from_metrics(run: Run) -> RunResult:
    """AP of the last evaluation and the median step time, read from the run's metrics.json."""
    records = read_metrics(os.path.join(run.path, "metrics.json"))
    evals = [r for r in records if "bbox/AP" in r]
    if not evals:
        raise RuntimeError(f"run '{run.name}' finished without a bbox evaluation in "
                           f"{run.output_dir}/metrics.json")
    ap = {k: float(evals[-1].get(f"bbox/{k}", float("nan"))) for k in AP_KEYS}
    times = [r["time"] for r in records if "time" in r and r.get("iteration", 0) >= run.max_iter // 2]
    times = times or [r["time"] for r in records if "time" in r]
    return RunResult(run.name, ap, statistics.median(times) if times else float("nan"), run.path)


def load_result(run: Run) -> Optional[RunResult]:
    """The stored result of an identical earlier run, or None."""
    path = os.path.join(run.path, RESULT_FILE)
    try:
        with open(path) as f:
            stored = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    if stored.get("fingerprint") != run.fingerprint():
        return None
    if not os.path.isfile(os.path.join(run.path, "model_final.pth")):
        return None
    return RunResult(run.name, stored["ap"], stored["sec_per_iter"], run.path, reused=True)


def save_result(run: Run, result: RunResult) -> None:
    payload = {"fingerprint": run.fingerprint(), "argv": run.argv()[1:], "ap": result.ap,
               "sec_per_iter": result.sec_per_iter}
    _atomic_write(os.path.join(run.path, RESULT_FILE),
                  lambda f: f.write(json.dumps(payload, indent=1).encode()))


class RunSequence:
    """Runs :class:`Run` s one after the other, printing progress with an overall ETA."""

    def __init__(self, runs: Sequence[Run], title: str = "d2kd", env: Optional[dict] = None):
        self.runs = list(runs)
        self.title = title
        self.env = dict(os.environ if env is None else env)
        self.start = time.time()

    def _remaining_after(self, index: int) -> float:
        return sum(r.max_iter * r.sec_per_iter for r in self.runs[index + 1:])

    def _train(self, index: int, run: Run) -> None:
        os.makedirs(run.path, exist_ok=True)
        log_path = os.path.join(run.path, "train_net.log")
        header = f"[{self.title} {index + 1}/{len(self.runs)} {run.name}]"
        print(f"{header} training {run.max_iter} iterations; log: {log_path}", flush=True)
        run_start = time.time()
        last_print = 0.0
        with open(log_path, "w", buffering=1) as log:
            proc = subprocess.Popen(run.argv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, bufsize=1, env=self.env, cwd=ROOT)
            for line in proc.stdout:
                log.write(line)
                match = _ITER_LINE.search(line)
                if match and time.time() - last_print > 20:
                    last_print = time.time()
                    it = int(match.group(2)) + 1
                    rate = (time.time() - run_start) / it
                    run_eta = (run.max_iter - it) * rate
                    # later runs scale with this machine's measured speed
                    total_eta = run_eta + self._remaining_after(index) * rate / run.sec_per_iter
                    print(f"{header} iter {it}/{run.max_iter}  {rate:.2f} s/iter  "
                          f"run ETA {_fmt_seconds(run_eta)}  all ETA {_fmt_seconds(total_eta)}  "
                          f"elapsed {_fmt_seconds(time.time() - self.start)}", flush=True)
            code = proc.wait()
        if code != 0:
            tail = open(log_path).read().splitlines()[-15:]
            raise RuntimeError(f"run '{run.name}' failed (exit {code}); its log is {log_path}. "
                               "Last lines:\n" + "\n".join(tail))
        print(f"{header} done in {_fmt_seconds(time.time() - run_start)}", flush=True)

    def run(self) -> List[RunResult]:
        results = []
        for index, run in enumerate(self.runs):
            result = load_result(run)
            if result is not None:
                print(f"[{self.title} {index + 1}/{len(self.runs)} {run.name}] reusing "
                      f"{run.output_dir} (AP {result.ap['AP']:.1f})", flush=True)
            else:
                self._train(index, run)
                result = result_from_metrics(run)
                save_result(run, result)
            results.append(result)
        return results


def format_table(results: Sequence[RunResult], reference: Optional[str] = None) -> str:
    """Markdown table: AP columns, s/iter and, when ``reference`` names a row, the AP gain over it
    and the step time as a ratio of its step time."""
    ref = next((r for r in results if r.name == reference), None)
    head = ["run", *AP_KEYS, "s/iter"] + (["dAP", "time x"] if ref else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        row = [r.name] + [f"{r.ap[k]:.1f}" for k in AP_KEYS] + [f"{r.sec_per_iter:.2f}"]
        if ref:
            row += [f"{r.ap['AP'] - ref.ap['AP']:+.1f}", f"{r.sec_per_iter / ref.sec_per_iter:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def mean_result(name: str, results: Sequence[RunResult]) -> RunResult:
    """One row standing for ``results``, the same run under several seeds: the mean of each AP
    and of the step time; ``output_dir`` is the first run's."""
    if not results:
        raise ValueError(f"no results to average for '{name}'")
    ap = {k: statistics.fmean(r.ap[k] for r in results) for k in AP_KEYS}
    return RunResult(name, ap, statistics.fmean(r.sec_per_iter for r in results), results[0].output_dir,
                     reused=all(r.reused for r in results))


def format_seed_table(rows: Dict[str, Sequence[RunResult]], reference: Optional[str] = None,
                      per_seed: bool = True) -> str:
    """Markdown table of runs repeated over seeds, one row per name of ``rows``, in its order.

    Each cell is the mean over the row's runs followed, when ``per_seed`` and the row has more
    than one run, by the runs' own values in parentheses. With ``reference`` (a key of ``rows``)
    it adds dAP and the step-time ratio against that row; per-seed values pair the i-th run of a
    row with the i-th run of the reference (list the seeds in the same order), and a row with
    another number of runs (e.g. a teacher trained once) gets the values of the means only.
    """
    ref = rows.get(reference) if reference is not None else None
    head = ["run", *AP_KEYS, "s/iter"] + (["dAP", "time x"] if ref else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(values: List[float], fmt: str) -> str:
        text = format(statistics.fmean(values), fmt)
        if per_seed and len(values) > 1:
            text += " (" + " / ".join(format(v, fmt) for v in values) + ")"
        return text

    for name, results in rows.items():
        row = [name] + [cell([r.ap[k] for r in results], ".1f") for k in AP_KEYS]
        row.append(cell([r.sec_per_iter for r in results], ".2f"))
        if ref:
            pairs = list(zip(results, ref)) if len(results) == len(ref) else [
                (mean_result(name, results), mean_result(reference, ref))]
            row.append(cell([r.ap["AP"] - q.ap["AP"] for r, q in pairs], "+.1f"))
            row.append(cell([r.sec_per_iter / q.sec_per_iter for r, q in pairs], ".2f"))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_results(results: Sequence[RunResult], path: str, title: str) -> str:
    """Bar chart of AP per run next to each run's validation AP / training loss curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_bar, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [r.name for r in results]
    aps = [r.ap["AP"] for r in results]
    bars = ax_bar.bar(range(len(aps)), aps, color="tab:blue")
    for bar, ap in zip(bars, aps):
        ax_bar.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{ap:.1f}",
                    ha="center", va="bottom")
    ax_bar.set_xticks(range(len(aps)))
    ax_bar.set_xticklabels(names, rotation=20, ha="right")
    ax_bar.set_ylabel("COCO box AP (val)")
    ax_bar.set_title(title)
    for r in results:
        records = read_metrics(os.path.join(r.output_dir, "metrics.json"))
        points = [(x["iteration"], x["total_loss"]) for x in records if "total_loss" in x]
        if points:
            ax_loss.plot(*zip(*points), label=r.name)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("total training loss")
    ax_loss.set_yscale("log")
    ax_loss.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return path
