"""Training and evaluation plumbing: config loading with strict overrides and fail-fast checks,
atomic checkpointing, hooks (training curves), CPU/GPU process set-up, Slurm via submitit.

``train_net.py`` at the repository root is the entry point that puts these together.
"""
from .checkpoint import (
    AtomicCheckpointer,
    CheckpointError,
    PeriodicCheckpointer,
    atomic_torch_save,
    atomic_write_text,
    remove_partial_files,
)
from .config import apply_overrides, check_config, load_config
from .defaults import (
    TrainData,
    build_evaluator,
    build_resumable_train_loader,
    build_test_loader,
    build_train_loader,
    default_argument_parser,
    detectron2_ops_available,
    parse_command_line,
    setup,
)
from .errors import ConfigError, D2KDUserError, DatasetError, one_line
from .hooks import GradientClipping, TrainingCurves, read_metrics, training_writers
from .preemption import PreemptionHook, defer_preemption, preemption_deferred
from .resume import ResumableSampler, TrainingStateHook, preserve_rng
from .launch import (
    check_replicas_in_sync,
    configure_threads,
    ddp_kwargs,
    default_device,
    setup_process,
    use_amp,
)

__all__ = [
    "AtomicCheckpointer",
    "CheckpointError",
    "ConfigError",
    "D2KDUserError",
    "DatasetError",
    "GradientClipping",
    "PeriodicCheckpointer",
    "PreemptionHook",
    "ResumableSampler",
    "TrainData",
    "TrainingCurves",
    "TrainingStateHook",
    "apply_overrides",
    "atomic_torch_save",
    "atomic_write_text",
    "build_evaluator",
    "build_resumable_train_loader",
    "build_test_loader",
    "build_train_loader",
    "check_config",
    "check_replicas_in_sync",
    "configure_threads",
    "ddp_kwargs",
    "default_argument_parser",
    "default_device",
    "defer_preemption",
    "detectron2_ops_available",
    "load_config",
    "one_line",
    "parse_command_line",
    "preemption_deferred",
    "preserve_rng",
    "read_metrics",
    "remove_partial_files",
    "setup",
    "setup_process",
    "training_writers",
    "use_amp",
]
