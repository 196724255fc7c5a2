"""Loading a LazyConfig with strict overrides, and fail-fast checks before anything is built.

``LazyConfig.apply_overrides`` silently *adds* a key it does not know (``train.max_iterr=5`` runs
the default schedule), so :func:`apply_overrides` checks every override first: the key must exist,
or be a keyword argument of the callable of a ``LazyCall`` node (``model.backbone.bottom_up.
freeze_at=0`` is valid although the config leaves it at its default). New keys are added with
Hydra's ``+key=value`` syntax.

:func:`check_config` runs in the launching process, before processes are spawned or a Slurm job
is submitted, and reports the first problem as one :class:`~d2kd.engine.errors.D2KDUserError`.
"""
import contextlib
import difflib
import inspect
import logging
import os
from typing import Iterator, List, Optional, Sequence

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from .checkpoint import check_checkpoint_file, check_resume_checkpoint
from .errors import ConfigError, DatasetError

logger = logging.getLogger(__name__)


def load_config(config_file: str, overrides: Sequence[str] = ()):
    """``LazyConfig.load(config_file)`` plus :func:`apply_overrides`; errors name the file/key."""
    from detectron2.config import LazyConfig

    if not config_file:
        raise ConfigError("no config given: pass --config-file configs/<...>.py")
    if not os.path.isfile(config_file):
        raise ConfigError(f"config file not found: {config_file!r}")
    cfg = LazyConfig.load(config_file)
    return apply_overrides(cfg, list(overrides or []))


def _callable_params(target) -> Optional[List[str]]:
    """Keyword arguments ``target`` (a callable or its dotted name) takes; None: any."""
    if isinstance(target, str):
        from detectron2.utils.registry import locate

        try:
            target = locate(target)
        except Exception:
            return None  # cannot tell; instantiate() will complain
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return list(params)


def _unknown_key(key: str, prefix: str, part: str, candidates: List[str],
                 override: str, why: str = "") -> ConfigError:
    close = difflib.get_close_matches(part, [str(c) for c in candidates], n=3)
    hint = ""
    if close:
        full = [f"{prefix}.{c}" if prefix else c for c in close]
        hint = " (did you mean " + ", ".join(map(repr, full)) + "?)"
    fix = f" ({why})" if why else f"; use '+{override}' to add a new key"
    return ConfigError(f"unknown config key {key!r} in override {override!r}{hint}{fix}")


def check_override_key(cfg, key: str, override: Optional[str] = None) -> None:
    """Raises :class:`ConfigError` unless ``key`` (dotted) names something ``cfg`` can take."""
    override = override or key
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i])
        if isinstance(node, ListConfig):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise ConfigError(f"{key!r} in override {override!r}: {prefix!r} is a list of "
                                  f"{len(node)} items, {part!r} is not an index of it")
            node = node._get_node(int(part))
        elif isinstance(node, DictConfig):
            if part in node:
                node = node._get_node(part)
            else:
                target = node._get_node("_target_") if "_target_" in node else None
                if target is not None:
                    target = target._value() if hasattr(target, "_value") else target
                    params = _callable_params(target)
                    if params is None or part in params:
                        return  # a constructor argument left at its default
                    name = getattr(target, "__qualname__", str(target))
                    keys = params + [k for k in node.keys() if k not in params + ["_target_"]]
                    raise _unknown_key(key, prefix, part, keys, override,
                                       f"{prefix} calls {name}, which has no argument {part!r}")
                raise _unknown_key(key, prefix, part, list(node.keys()), override)
        else:
            raise ConfigError(
                f"{key!r} in override {override!r}: {prefix!r} is a value, not a config node"
            )


def apply_overrides(cfg, overrides: Sequence[str]):
    """Applies ``key=value`` overrides (Hydra syntax) after checking each key exists.

    ``+key=value`` and ``++key=value`` may add keys. Returns ``cfg`` (modified in place).
    """
    if not overrides:
        return cfg
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for text in overrides:
        try:
            (o,) = parser.parse_overrides([text])
        except HydraException as e:
            raise ConfigError(f"cannot parse override {text!r}: {e}") from e
        if o.is_delete():
            raise ConfigError(f"override {text!r}: deleting keys is not supported")
        key = o.key_or_group
        if not (o.is_add() or o.is_force_add()):
            check_override_key(cfg, key, text)
        try:
            OmegaConf.update(cfg, key, o.value(), merge=True)
        except Exception as e:
            raise ConfigError(f"cannot apply override {text!r}: {e}") from e
    return cfg


def _select(cfg, key: str, default=None):
    try:
        return OmegaConf.select(cfg, key, default=default)
    except Exception:
        return default


def dataset_names(cfg, splits: Sequence[str] = ("train", "test")) -> List[str]:
    """Names of the data sets ``cfg.dataloader.<split>.dataset.names`` for each of ``splits``."""
    names: List[str] = []
    for split in splits:
        value = _select(cfg, f"dataloader.{split}.dataset.names")
        if value is None:
            continue
        if isinstance(value, str):
            value = [value]
        names += [n for n in value if n not in names]
    return names


def register_builtin_datasets() -> None:
    """Imports :mod:`d2kd.data`, which registers the built-in data sets."""
    try:
        import d2kd.data  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name not in ("d2kd.data",):
            raise


def check_datasets(names: Sequence[str]) -> None:
    """Raises :class:`DatasetError` for the first name that is not a registered data set."""
    from detectron2.data import DatasetCatalog

    register_builtin_datasets()
    registered = DatasetCatalog.list()
    for name in names:
        if name not in registered:
            close = difflib.get_close_matches(name, registered, n=3)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            d2kd_names = sorted(n for n in registered if n.startswith("d2kd_"))
            raise DatasetError(
                f"data set {name!r} is not registered{hint}; built-in d2kd data sets: "
                f"{', '.join(d2kd_names) or 'none (is d2kd.data importable?)'}; "
                "COCO-format data sets are read under $DETECTRON2_DATASETS"
            )


def _describe_dataset(name: str) -> str:
    from detectron2.data import MetadataCatalog

    json_file = MetadataCatalog.get(name).get("json_file", None)
    return f"data set {name!r}" + (f" (annotations {json_file})" if json_file else "")


@contextlib.contextmanager
def dataset_errors(names: Sequence[str]) -> Iterator[None]:
    """Turns a failure to load one of ``names`` into one :class:`DatasetError` naming it.

    Around the instantiation of a data loader: on an exception, each data set is loaded alone to
    find the culprit (only on failure, so the happy path loads every data set once).
    """
    try:
        yield
    except DatasetError:
        raise
    except Exception as e:
        from detectron2.data import DatasetCatalog

        for name in names:
            try:
                DatasetCatalog.get(name)
            except Exception as inner:
                raise DatasetError(
                    f"cannot load {_describe_dataset(name)}: {type(inner).__name__}: {inner}"
                ) from inner
        raise e


def resolve_device(cfg) -> str:
    """Checks ``train.device`` against the machine; returns it (``cuda`` -> ``cuda`` etc.)."""
    device = str(_select(cfg, "train.device", "cpu"))
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"train.device={device!r} is not a device: {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device={device!r} but CUDA is not available on this machine; "
            "use train.device=cpu"
        )
    return device


REQUIRED = ("model", "train", "train.output_dir", "train.max_iter")
REQUIRED_TRAIN = ("optimizer", "lr_multiplier", "dataloader.train")


def check_config(cfg, *, eval_only: bool = False, resume: bool = False) -> None:
    """Fail-fast checks of a loaded config; raises one clear error or returns.

    Checks: the parts ``train_net.py`` needs exist; ``train.device`` exists on this machine; every
    data set is registered; the checkpoint to start from (``last_checkpoint`` with ``--resume``,
    else ``train.init_checkpoint``) exists and is not truncated.
    """
    for key in REQUIRED + (() if eval_only else REQUIRED_TRAIN):
        if _select(cfg, key) is None:
            raise ConfigError(f"the config has no {key!r} (see configs/common/train.py)")
    resolve_device(cfg)
    check_datasets(dataset_names(cfg, ("test",) if eval_only else ("train", "test")))
    resume_from = check_resume_checkpoint(cfg.train.output_dir) if resume else None
    if resume_from is None:
        init = _select(cfg, "train.init_checkpoint", "") or ""
        if init:
            check_checkpoint_file(init, what="train.init_checkpoint")
        elif eval_only:
            raise ConfigError(
                "--eval-only needs weights: set train.init_checkpoint=<model_final.pth> "
                "(or --resume to evaluate the last checkpoint of train.output_dir)"
            )
