"""Exact resume: what a checkpoint holds besides the weights, the optimizer, the scheduler and the
iteration, so that a run resumed from it continues the run it interrupted.

Three things decide what an interrupted run would have done next, and detectron2 restarts all of
them on ``--resume``:

- the position of the training sampler in its (infinite, seeded) stream of image indices:
  :class:`ResumableSampler` skips the indices already trained on;
- the random number generators: Python's ``random``, numpy's global generator, torch's CPU and
  CUDA generators, and every generator a model module owns (see :func:`module_generators`);
- the smoothing windows of the logged scalars (``metrics.json`` logs medians over the last 20
  iterations), so that the resumed run logs the values the uninterrupted one would have.

:class:`TrainingStateHook` captures them (on every process, gathered to the main process) whenever
a checkpoint is about to be written, returns them as its ``state_dict`` (detectron2's trainer
saves the state of its hooks in each checkpoint), and puts them back before the first resumed
iteration. Evaluation during training is made neutral to the random generators
(:func:`preserve_rng`), since a resumed run does not repeat the evaluation of its start.

Exactness, as tested (``tests/engine/test_resume.py``): bit-exact on CPU in one process with
``num_workers=0``. The guarantee needs the loader to consume the sampler in order, one batch after
the other: true without aspect-ratio grouping, and with it when every image falls in one aspect
group (the built-in data set: square images); with COCO's two groups, the images waiting in the
other group when the checkpoint is written are skipped on resume (a warning says how many when it
can tell). With ``num_workers > 0`` the workers' own generators (augmentation) restart from their
seeds: the resumed run trains on the same images in the same order, with different random
augmentations.
"""
import contextlib
import logging
import random
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.events import HistoryBuffer
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

# How many of the latest values of each logged scalar a checkpoint keeps: more than the window of
# detectron2's writers (20), enough for the ETA's median of iteration times to restart sensibly.
HISTORY_LENGTH = 100


class ResumableSampler(Sampler):
    """Wraps an index sampler (detectron2's infinite ``TrainingSampler`` and the like) so that
    iteration can start at a given position of its stream.

    Args:
        sampler: the sampler whose stream is replayed; its indices are generated (cheap) but the
            first ``start`` are not yielded, so no image is loaded for them.
        start: how many indices of the stream to skip.

    Attributes:
        yielded: indices yielded since the iteration began (counted in the process that iterates:
            the main process when the loader has no workers).
    """

    def __init__(self, sampler, start: int = 0):
        self.sampler = sampler
        self.start = int(start)
        self.yielded = 0

    def __iter__(self) -> Iterator[int]:
        self.yielded = 0
        it = iter(self.sampler)
        for _ in range(self.start):
            next(it)
        for index in it:
            self.yielded += 1
            yield index

    def __len__(self):
        return len(self.sampler)

    @property
    def seed(self) -> Optional[int]:
        """The wrapped sampler's seed (detectron2's samplers keep it in ``_seed``), if any."""
        seed = getattr(self.sampler, "_seed", None)
        return int(seed) if seed is not None else None

    @seed.setter
    def seed(self, value: int) -> None:
        if hasattr(self.sampler, "_seed"):
            self.sampler._seed = int(value)


# ------------------------------------------------------------------------------ random generators


def module_generators(model: torch.nn.Module) -> Dict[str, Any]:
    """The random generators the modules of ``model`` own, by name.

    The protocol a module follows to have its randomness restored on resume (either one):

    - hold a ``torch.Generator`` as a plain attribute (``self.generator = torch.Generator()``):
      found here as ``"<module name>.<attribute>"``;
    - implement ``rng_state() -> dict`` and ``set_rng_state(dict)`` (tensors, numbers, strings,
      lists and dicts only): found as ``"<module name>"``.

    Returns ``{name: torch.Generator | module with rng_state}``.
    """
    found: Dict[str, Any] = {}
    for name, module in model.named_modules():
        if callable(getattr(module, "rng_state", None)) and callable(
            getattr(module, "set_rng_state", None)
        ):
            found[name] = module
        for attr, value in vars(module).items():
            if isinstance(value, torch.Generator):
                found[f"{name}.{attr}" if name else attr] = value
    return found


def capture_rng(model: Optional[torch.nn.Module] = None) -> Dict[str, Any]:
    """The state of every random generator training draws from (see the module doc).

    Only types that ``torch.load(weights_only=True)`` accepts, so checkpoints stay loadable with
    torch's default.
    """
    np_state = np.random.get_state(legacy=False)
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "modules": {},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if model is not None:
        for name, gen in module_generators(model).items():
            state["modules"][name] = (
                gen.get_state() if isinstance(gen, torch.Generator) else gen.rng_state()
            )
    return state


def restore_rng(state: Dict[str, Any], model: Optional[torch.nn.Module] = None) -> None:
    """Puts back what :func:`capture_rng` returned (module generators matched by name)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if model is not None:
        saved = state.get("modules", {})
        current = module_generators(model)
        missing = sorted(set(current) - set(saved))
        if missing:
            logger.warning("The checkpoint has no state for the random generators %s: they "
                           "restart from their seeds", ", ".join(missing))
        for name, gen in current.items():
            if name in saved:
                if isinstance(gen, torch.Generator):
                    gen.set_state(saved[name])
                else:
                    gen.set_rng_state(saved[name])


@contextlib.contextmanager
def preserve_rng(model: Optional[torch.nn.Module] = None) -> Iterator[None]:
    """Runs the body without a trace on the random generators (an evaluation during training)."""
    state = capture_rng(model)
    try:
        yield
    finally:
        restore_rng(state, model)


# ------------------------------------------------------------------------------ logged scalars


def capture_history(storage, length: int = HISTORY_LENGTH) -> Dict[str, Any]:
    """The latest ``length`` values of each scalar of a detectron2 ``EventStorage``."""
    hints = storage.smoothing_hints()
    return {
        name: {
            "values": [[float(v), int(i)] for v, i in buf.values()[-length:]],
            "smoothing_hint": bool(hints.get(name, True)),
        }
        for name, buf in storage.histories().items()
    }


def restore_history(storage, history: Dict[str, Any]) -> None:
    """Refills the histories of ``storage`` (a new ``EventStorage``) with
    :func:`capture_history`'s values, without marking them as new (writers do not log them again)."""
    for name, entry in history.items():
        buf = HistoryBuffer()
        for value, iteration in entry["values"]:
            buf.update(float(value), int(iteration))
        storage._history[name] = buf
        storage._smoothing_hints[name] = entry["smoothing_hint"]


# ------------------------------------------------------------------------------ the hook


class TrainingStateHook(HookBase):
    """Saves and restores the training state of the module doc with each checkpoint.

    Register it on every process, before the checkpointing hooks. Its ``state_dict`` (saved by
    detectron2's trainer inside the checkpoint) is ``{"ranks": [per-process state], ...}``; each
    process restores its own entry.

    Args:
        model: the trained model (its module generators are included).
        sampler: the training loader's :class:`ResumableSampler` (None: the data position is not
            restored, and a warning says so on resume).
        batch_size: images per iteration and process (how far the sampler advances per step).
        checkpoint_period: ``train.checkpointer.period``: the state is captured on the
            iterations a checkpoint is written (and by :meth:`capture` on demand).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        sampler: Optional[ResumableSampler],
        batch_size: int,
        checkpoint_period: int,
    ):
        self.model = model
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.period = int(checkpoint_period)
        self._snapshot: Optional[Dict[str, Any]] = None
        self._pending: Optional[Dict[str, Any]] = None
        self._start_position = 0
        self._bucket_warning = False

    # -- position of the data stream
    def position(self) -> int:
        """Sampler indices consumed by the iterations trained so far (this process)."""
        done = self.trainer.iter + 1 - self.trainer.start_iter
        return self._start_position + done * self.batch_size

    def _check_position(self, position: int) -> None:
        if self.sampler is None or self._bucket_warning:
            return
        measured = self._start_position + self.sampler.yielded
        if self.sampler.yielded and measured != position:  # 0: the sampler runs in workers
            self._bucket_warning = True
            logger.warning(
                "The data loader has read %d images that no iteration has used yet (aspect-ratio "
                "groups waiting to fill): a run resumed from this checkpoint skips them",
                measured - position)

    # -- capture
    def _local_state(self) -> Dict[str, Any]:
        position = self.position()
        self._check_position(position)
        return {
            "rank": comm.get_rank(),
            "rng": capture_rng(self.model),
            "data_position": position,
            "sampler_seed": self.sampler.seed if self.sampler is not None else None,
        }

    def capture(self) -> None:
        """Captures the state of every process now (a collective call: all processes)."""
        local = self._local_state()
        ranks = comm.gather(local, dst=0) if comm.get_world_size() > 1 else [local]
        if comm.is_main_process():
            self._snapshot = {
                "ranks": ranks,
                "world_size": comm.get_world_size(),
                "iteration": self.trainer.iter,
                "history": capture_history(self.trainer.storage),
            }

    def _checkpoint_due(self) -> bool:
        it = self.trainer.iter
        return (it + 1) % self.period == 0 or it >= self.trainer.max_iter - 1

    def after_step(self):
        if self._checkpoint_due():
            self.capture()

    def state_dict(self) -> Dict[str, Any]:
        return self._snapshot or {}

    # -- restore
    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if not state:
            return
        if int(state.get("world_size", 1)) != comm.get_world_size():
            logger.warning(
                "The checkpoint was written by %d processes, this run has %d: the data stream "
                "and the random generators restart (the run is not an exact continuation)",
                state.get("world_size"), comm.get_world_size())
            return
        self._pending = state["ranks"][comm.get_rank()]
        self._pending["history"] = state.get("history", {})
        if self.sampler is not None:
            self.sampler.start = self._start_position = int(self._pending["data_position"])
            if self._pending.get("sampler_seed") is not None:
                self.sampler.seed = self._pending["sampler_seed"]

    def before_train(self):
        # The loader's iterator is created here rather than in the first step, so that whatever
        # creating it draws from the global generators happens before they are restored (a
        # resumed run creates it at its first step, the uninterrupted run did at step 0).
        # build_resumable_train_loader also gives the DataLoader its own generator: torch's
        # DataLoader draws its base seed at the first batch, not at creation.
        self.trainer._data_loader_iter  # noqa: B018
        if self._pending is None:
            if self.trainer.start_iter > 0:
                logger.warning("Resuming from a checkpoint without a training state (written by "
                               "an older d2kd?): the data stream and the random generators "
                               "restart, so the run is not an exact continuation")
            return
        restore_rng(self._pending["rng"], self.model)
        if comm.is_main_process():
            restore_history(self.trainer.storage, self._pending.get("history", {}))
        if self.sampler is None:
            logger.warning("The training loader has no ResumableSampler: its data stream restarts")
        logger.info("Restored the training state of iteration %d (data position %d, random "
                    "generators)", self.trainer.start_iter - 1, self._pending["data_position"])
        self._pending = None
