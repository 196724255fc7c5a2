"""Training and evaluation plumbing: config loading with strict overrides and fail-fast checks,
atomic checkpointing, hooks (training curves), CPU/GPU process set-up, Slurm via submitit.

``train_net.py`` at the repository root is the entry point that puts these together.
"""
from .checkpoint import AtomicCheckpointer, CheckpointError, atomic_torch_save, atomic_write_text
from .config import apply_overrides, check_config, load_config
from .defaults import (
    build_evaluator,
    build_test_loader,
    build_train_loader,
    default_argument_parser,
    detectron2_ops_available,
    setup,
)
from .errors import ConfigError, D2KDUserError, DatasetError
from .hooks import GradientClipping, TrainingCurves, read_metrics
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
    "TrainingCurves",
    "apply_overrides",
    "atomic_torch_save",
    "atomic_write_text",
    "build_evaluator",
    "build_test_loader",
    "build_train_loader",
    "check_config",
    "check_replicas_in_sync",
    "configure_threads",
    "ddp_kwargs",
    "default_argument_parser",
    "default_device",
    "detectron2_ops_available",
    "load_config",
    "read_metrics",
    "setup",
    "setup_process",
    "use_amp",
]
