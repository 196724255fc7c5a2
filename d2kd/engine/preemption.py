"""Preemption that loses nothing: save the current state before a Slurm job is requeued.

submitit handles Slurm's preemption/timeout signal (SIGUSR2) by calling the job's
``checkpoint()`` and requeuing it at once, from inside the signal handler, at whatever point the
training loop was. Requeued that way, the job resumes from the last *periodic* checkpoint and
loses up to ``train.checkpointer.period`` iterations. A checkpoint cannot be written from the
handler itself either: the signal may arrive in the middle of an optimizer step.

So :func:`defer_preemption` (called in the job, after submitit installed its handlers) replaces
the handler by one that only records the signal while training runs. :class:`PreemptionHook`
then, at the end of the current iteration (all processes agree on which one), writes a
checkpoint of exactly that iteration (with the training state of :mod:`d2kd.engine.resume`) and
hands the signal to submitit's handler, which requeues the job with ``--resume``. Outside the
training loop (model building, the final evaluation) the signal goes to submitit at once.
"""
import logging
import signal
import sys
from typing import Any, Callable, Optional

from detectron2.engine import HookBase
from detectron2.utils import comm

logger = logging.getLogger(__name__)


class _Deferred:
    """The process-wide record of a deferred signal."""

    def __init__(self):
        self.original: Optional[Callable[..., Any]] = None  # submitit's handler
        self.signum: Optional[int] = None
        self.pending: Optional[tuple] = None  # (signum, frame) received during training
        self.training = False

    def handle(self, signum, frame):
        if self.training:
            logger.warning("Caught signal %s: saving a checkpoint at the end of this iteration "
                           "before the job is requeued", signal.Signals(signum).name)
            self.pending = (signum, frame)
        else:
            self.forward(signum, frame)

    def forward(self, signum, frame):
        if callable(self.original):
            self.original(signum, frame)


_DEFERRED = _Deferred()


def defer_preemption(signum: Optional[int] = None) -> None:
    """Defers the preemption signal ``signum`` (default: the one submitit handles) to
    :class:`PreemptionHook`. Call it in the job process, after submitit set up its handlers."""
    if signum is None:
        import submitit

        signum = submitit.JobEnvironment._usr_sig()
    current = signal.getsignal(signum)
    if current is not _DEFERRED.handle:
        _DEFERRED.original = current
    _DEFERRED.signum = signum
    _DEFERRED.pending = None
    signal.signal(signum, _DEFERRED.handle)


def preemption_deferred() -> bool:
    """Whether :func:`defer_preemption` was called in this process."""
    return _DEFERRED.signum is not None


class PreemptionHook(HookBase):
    """Saves a checkpoint of the current iteration when a deferred preemption signal arrived,
    then lets submitit requeue the job (module doc).

    Register it on every process, after the hooks that finish an iteration (LR scheduler,
    training state) and before the periodic checkpointer. With several processes it all-gathers
    one flag per iteration, so that all stop after the same iteration.

    Args:
        checkpointer: the run's checkpointer (saves on the main process only).
        state_hook: the run's :class:`~d2kd.engine.resume.TrainingStateHook` (captured first).
    """

    def __init__(self, checkpointer, state_hook=None):
        self.checkpointer = checkpointer
        self.state_hook = state_hook

    def before_train(self):
        _DEFERRED.training = True

    def after_train(self):
        _DEFERRED.training = False

    def after_step(self):
        pending = _DEFERRED.pending is not None
        if comm.get_world_size() > 1:
            pending = any(comm.all_gather(pending))
        if not pending:
            return
        it = self.trainer.iter
        if self.state_hook is not None:
            self.state_hook.capture()
        if comm.is_main_process():
            self.checkpointer.save(f"model_{it:07d}", iteration=it)
            logger.info("Preempted: saved iteration %d; the requeued job resumes at %d",
                        it, it + 1)
        comm.synchronize()
        _DEFERRED.training = False
        signum, frame = _DEFERRED.pending or (_DEFERRED.signum, None)
        _DEFERRED.pending = None
        _DEFERRED.forward(signum, frame)  # submitit: requeue and exit (its main task)
        # Other tasks: submitit's handler returns for them; the main task is gone.
        sys.exit(0)
