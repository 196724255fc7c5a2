"""Pieces of ``train_net.py`` that other entry points reuse: argument parser, set-up, loaders,
evaluator."""
import copy
import inspect
import logging
import os

from detectron2.config import instantiate
from detectron2.engine import default_argument_parser as _d2_argument_parser
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import locate
from omegaconf import OmegaConf

from .config import check_config, dataset_names, dataset_errors, load_config
from .slurm import add_slurm_arguments

logger = logging.getLogger(__name__)


def default_argument_parser(epilog=None):
    """Detectron2's parser (``--config-file``, ``--resume``, ``--eval-only``, ``--num-gpus``,
    ``--num-machines``, ``--machine-rank``, ``--dist-url``, ``key=value`` overrides) plus the
    Slurm options of :func:`~d2kd.engine.slurm.add_slurm_arguments`.

    On a machine without GPUs ``--num-gpus N`` starts N CPU processes (gloo).
    """
    return add_slurm_arguments(_d2_argument_parser(epilog))


def detectron2_ops_available() -> bool:
    """Whether detectron2's compiled ops (``detectron2._C``) load in this Python."""
    try:
        from detectron2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


def setup(args):
    """Loads the config with ``args.opts`` applied, checks it, runs detectron2's
    ``default_setup`` (logger, environment, config.yaml, seeds); returns the config."""
    cfg = load_config(args.config_file, args.opts)
    check_config(cfg, eval_only=args.eval_only, resume=args.resume)
    default_setup(cfg, args)
    # detectron2 sets up its own loggers only; d2kd's modules log under "d2kd".
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="d2kd",
                 abbrev_name="d2kd")
    return cfg


def build_train_loader(cfg):
    """``instantiate(cfg.dataloader.train)``; a data set that fails to load is named."""
    with dataset_errors(dataset_names(cfg, ("train",))):
        return instantiate(cfg.dataloader.train)


def build_test_loader(cfg):
    """``instantiate(cfg.dataloader.test)``; a data set that fails to load is named."""
    with dataset_errors(dataset_names(cfg, ("test",))):
        return instantiate(cfg.dataloader.test)


def build_evaluator(cfg):
    """``instantiate(cfg.dataloader.evaluator)`` with two defaults filled in: COCO-style
    evaluators get ``use_fast_impl=False`` when detectron2's C++ ops are missing, and an
    ``output_dir`` of ``<train.output_dir>/inference`` (predictions are saved there)."""
    ev = copy.deepcopy(cfg.dataloader.evaluator)
    target = ev.get("_target_") if OmegaConf.is_dict(ev) else None
    if isinstance(target, str):
        target = locate(target)
    if target is not None:
        try:
            params = inspect.signature(target).parameters
        except (TypeError, ValueError):
            params = {}
        if "use_fast_impl" in params and not detectron2_ops_available():
            ev.use_fast_impl = False
        if "output_dir" in params and not ev.get("output_dir"):
            ev.output_dir = os.path.join(cfg.train.output_dir, "inference")
    return instantiate(ev)
