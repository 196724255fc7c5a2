"""Pieces of ``train_net.py`` that other entry points reuse: argument parser, set-up, loaders,
evaluator."""
import copy
import inspect
import logging
import os
import re
import sys
from typing import List, NamedTuple, Optional, Sequence

import torch

from detectron2.config import instantiate
from detectron2.engine import default_argument_parser as _d2_argument_parser
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import locate
from omegaconf import OmegaConf

from .config import check_config, dataset_names, dataset_errors, load_config
from .resume import ResumableSampler
from .slurm import add_slurm_arguments

logger = logging.getLogger(__name__)

EPILOG = """examples:

  train:        train_net.py --config-file configs/baselines/faster_rcnn_R18_fpn_builtin.py
  2 processes:  train_net.py --config-file configs/kd_detr/dino_to_frcnn_builtin.py --num-gpus 2
  continue:     train_net.py --config-file CFG --resume
  evaluate:     train_net.py --config-file CFG --eval-only train.init_checkpoint=out/model_final.pth
  overrides:    train_net.py --config-file CFG train.max_iter=500 optimizer.lr=0.01 \\
                    model.teacher.weights=output/dino_R50_builtin/model_final.pth
  new key:      train_net.py --config-file CFG +train.my_key=1
  Slurm:        train_net.py --config-file CFG --slurm --nodes 2 --gpus-per-node 8 --partition p

Overrides are key=value pairs of the LazyConfig (Hydra syntax), checked against the config: the
key must exist and the value must have the type of the value it replaces. Flags and overrides
may come in any order. Multi-machine runs: --num-machines, --machine-rank and --dist-url
tcp://<host of machine 0>:<port>, as in detectron2.
"""


def default_argument_parser(epilog=None):
    """Detectron2's parser (``--config-file``, ``--resume``, ``--eval-only``, ``--num-gpus``,
    ``--num-machines``, ``--machine-rank``, ``--dist-url``, ``key=value`` overrides) plus the
    Slurm options of :func:`~d2kd.engine.slurm.add_slurm_arguments`, with d2kd's examples.

    On a machine without GPUs ``--num-gpus N`` starts N CPU processes (gloo). Use
    :func:`parse_command_line` to accept flags after the overrides.
    """
    parser = add_slurm_arguments(_d2_argument_parser(epilog or EPILOG))
    for action in parser._actions:
        if action.dest == "opts":  # detectron2's help text speaks of yacs ("MODEL.WEIGHTS")
            action.help = "key=value overrides of the config (see the examples below)"
    return parser


def parse_command_line(parser, argv: Optional[Sequence[str]] = None):
    """``parser.parse_args`` with flags accepted anywhere, also after the overrides.

    detectron2's parser gives every token after the first ``key=value`` to the overrides, so
    ``... train.max_iter=5 --eval-only`` read ``--eval-only`` as an override. Here every token
    that is one of the parser's options (with its value, if it takes one) is moved first.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    options = parser._option_string_actions
    flags: List[str] = []
    rest: List[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name = token.split("=", 1)[0]
        if token.startswith("-") and name in options:
            flags.append(token)
            takes_value = options[name].nargs != 0
            if takes_value and "=" not in token and i + 1 < len(argv):
                flags.append(argv[i + 1])
                i += 1
        elif token.startswith("--") and "=" not in token:
            flags.append(token)  # unknown option: let argparse report it
        else:
            rest.append(token)
        i += 1
    return parser.parse_args(flags + rest)


def detectron2_ops_available() -> bool:
    """Whether detectron2's compiled ops (``detectron2._C``) load in this Python."""
    try:
        from detectron2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class PlainFormatter(logging.Formatter):
    """A formatter without ANSI colour codes (detectron2 colours some messages, e.g. the
    missing-keys lists and the class histogram; they belong on a terminal, not in log.txt)."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record):
        return _ANSI.sub("", self.inner.format(record))


def strip_colours_from_log_files(names: Sequence[str] = ("detectron2", "d2kd", "fvcore")) -> None:
    """Makes the file handlers of the loggers ``names`` write plain text."""
    for name in names:
        for h in logging.getLogger(name).handlers:
            stream = getattr(h, "stream", None)
            is_file = stream is not None and getattr(stream, "name", "<") not in (
                "<stdout>", "<stderr>")
            if is_file and not isinstance(h.formatter, PlainFormatter):
                h.setFormatter(PlainFormatter(h.formatter or logging.Formatter()))


def setup(args):
    """Loads the config with ``args.opts`` applied, checks it, runs detectron2's
    ``default_setup`` (logger, environment, config.yaml, seeds); returns the config."""
    cfg = load_config(args.config_file, args.opts)
    check_config(cfg, eval_only=args.eval_only, resume=args.resume)
    # The loggers default_setup creates, created first (setup_logger is cached: default_setup's
    # identical calls return them as they are) so that their files are plain text from the
    # first line on (default_setup logs the config file with syntax colours).
    rank = comm.get_rank()
    setup_logger(cfg.train.output_dir, distributed_rank=rank, name="fvcore")
    setup_logger(cfg.train.output_dir, distributed_rank=rank)
    # detectron2 sets up its own loggers only; d2kd's modules log under "d2kd".
    setup_logger(cfg.train.output_dir, distributed_rank=rank, name="d2kd", abbrev_name="d2kd")
    strip_colours_from_log_files()
    default_setup(cfg, args)
    return cfg


class TrainData(NamedTuple):
    """The training loader and what resuming it exactly needs (see :mod:`d2kd.engine.resume`)."""

    loader: object
    sampler: Optional[ResumableSampler]  # None: the loader's data stream cannot be resumed
    batch_size: int  # images per iteration and process


def _takes(target, name: str) -> bool:
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def build_resumable_train_loader(cfg) -> TrainData:
    """The training loader of ``cfg.dataloader.train`` with its sampler wrapped in a
    :class:`ResumableSampler`, and bad boxes dropped (:func:`d2kd.data.validation.drop_bad_boxes`).

    Works for ``build_detection_train_loader`` and loaders that forward its arguments (a
    ``dataset`` list and a ``sampler``); other loaders are instantiated as they are (no exact
    resume of the data stream; the training state hook warns).
    """
    from detectron2.data.samplers import TrainingSampler

    from d2kd.data.validation import drop_bad_boxes

    node = cfg.dataloader.train
    names = dataset_names(cfg, ("train",))
    target = node.get("_target_") if OmegaConf.is_dict(node) else None
    if isinstance(target, str):
        target = locate(target)
    with dataset_errors(names):
        if target is None or not (_takes(target, "sampler") and "dataset" in node):
            loader = instantiate(node)
            return TrainData(loader, None, _batch_size(node))
        kwargs = {k: instantiate(v) if OmegaConf.is_config(v) else v
                  for k, v in node.items() if k != "_target_"}
        dataset = kwargs["dataset"]
        if isinstance(dataset, list):
            dataset, _ = drop_bad_boxes(dataset, ", ".join(names))
            kwargs["dataset"] = dataset
        if not hasattr(dataset, "__len__") or isinstance(dataset, torch.utils.data.IterableDataset):
            return TrainData(target(**kwargs), None, _batch_size(node))
        sampler = kwargs.get("sampler") or TrainingSampler(len(dataset))
        kwargs["sampler"] = ResumableSampler(sampler)
        if _takes(target, "seed") and kwargs.get("seed") is None:
            # The DataLoader draws its workers' base seed when its iterator first yields: from
            # torch's global generator unless it has its own. A resumed run's first batch would
            # then move the global generator where the uninterrupted run's did not.
            shared = kwargs["sampler"].seed
            if shared is None:
                shared = comm.shared_random_seed()
            kwargs["seed"] = (shared + 1 + comm.get_rank()) % 2**31
        return TrainData(target(**kwargs), kwargs["sampler"], _batch_size(node))


def _batch_size(node) -> int:
    if node.get("single_gpu_batch_size"):
        return int(node.single_gpu_batch_size)
    return int(node.get("total_batch_size", 1)) // comm.get_world_size()


def build_train_loader(cfg):
    """The training loader of ``cfg`` (see :func:`build_resumable_train_loader`)."""
    return build_resumable_train_loader(cfg).loader


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
