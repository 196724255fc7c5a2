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


_UNKNOWN = object()  # the type an override must have cannot be told


def check_override_key(cfg, key: str, override: Optional[str] = None):
    """Raises :class:`ConfigError` unless ``key`` (dotted) names something ``cfg`` can take.

    Returns what the override replaces: the current value, or the default of the constructor
    argument it sets (``_UNKNOWN`` when there is none to compare with).
    """
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
                    if params is None:
                        return _UNKNOWN
                    if part in params:  # a constructor argument left at its default
                        if i < len(parts) - 1:
                            return _UNKNOWN
                        return _param_default(target, part)
                    name = getattr(target, "__qualname__", str(target))
                    keys = params + [k for k in node.keys() if k not in params + ["_target_"]]
                    raise _unknown_key(key, prefix, part, keys, override,
                                       f"{prefix} calls {name}, which has no argument {part!r}")
                raise _unknown_key(key, prefix, part, list(node.keys()), override)
        else:
            raise ConfigError(
                f"{key!r} in override {override!r}: {prefix!r} is a value, not a config node"
            )
    return node._value() if hasattr(node, "_value") and not OmegaConf.is_config(node) else node


def _param_default(target, name: str):
    if isinstance(target, str):
        from detectron2.utils.registry import locate

        target = locate(target)
    default = inspect.signature(target).parameters[name].default
    return _UNKNOWN if default is inspect.Parameter.empty else default


def _type_name(value) -> str:
    if OmegaConf.is_dict(value) or isinstance(value, dict):
        return "a config node"
    if OmegaConf.is_list(value) or isinstance(value, (list, tuple)):
        return "a list"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), type(value).__name__)


def check_override_value(key: str, value, replaced, override: str):
    """The value an override sets, checked against the type of the value it ``replaced``.

    Booleans, integers, numbers (an integer is accepted), strings (a number is accepted, as its
    text: a path may look like one), lists and config nodes must stay what they are; ``null``
    and values the config does not fix (``None``, interpolations, other objects) pass. Raises
    :class:`ConfigError` naming the key, the value and the expected type.
    """
    if replaced is _UNKNOWN or replaced is None or value is None:
        return value
    if isinstance(replaced, str) and "${" in replaced:
        return value  # an interpolation: its type is that of another key
    expected = _type_name(replaced)

    def error():
        return ConfigError(f"override {override!r}: {key} expects {expected} (like "
                           f"{_shown(replaced)}), got {value!r}, which is {_type_name(value)}")

    if isinstance(replaced, bool):
        if not isinstance(value, bool):
            raise error()
    elif isinstance(replaced, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise error()
    elif isinstance(replaced, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error()
        return float(value)
    elif isinstance(replaced, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise error()
    elif OmegaConf.is_dict(replaced) or isinstance(replaced, dict):
        if not isinstance(value, dict):
            raise error()
    elif OmegaConf.is_list(replaced) or isinstance(replaced, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise error()
    return value


def _shown(value) -> str:
    if OmegaConf.is_config(value):
        text = str(OmegaConf.to_container(value, resolve=False))
    else:
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
        value = o.value()
        if not (o.is_add() or o.is_force_add()):
            replaced = check_override_key(cfg, key, text)
            value = check_override_value(key, value, replaced, text)
        try:
            OmegaConf.update(cfg, key, value, merge=True)
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


def check_dataset_files(names: Sequence[str]) -> None:
    """Loads each data set of ``names`` and checks its image files
    (:func:`d2kd.data.validation.check_images`); one :class:`DatasetError` names the culprit."""
    from detectron2.data import DatasetCatalog

    from d2kd.data.validation import check_images

    for name in names:
        try:
            dicts = DatasetCatalog.get(name)
        except DatasetError:
            raise
        except Exception as e:
            raise DatasetError(
                f"cannot load {_describe_dataset(name)}: {type(e).__name__}: {e}") from e
        check_images(dicts, name)


def _nodes(node, path: str) -> Iterator[tuple]:
    """``(dotted path, node)`` of every config node under ``node`` (depth first)."""
    if OmegaConf.is_dict(node):
        yield path, node
        for k in node.keys():
            yield from _nodes(node._get_node(k), f"{path}.{k}")
    elif OmegaConf.is_list(node):
        for i in range(len(node)):
            yield from _nodes(node._get_node(i), f"{path}.{i}")


def _target_of(node):
    target = node.get("_target_") if "_target_" in node else None
    if isinstance(target, str):
        from detectron2.utils.registry import locate

        try:
            target = locate(target)
        except Exception:
            return None
    return target


def _loads_weights(target) -> bool:
    """Whether ``target`` is a module that loads weights of its own when built (the frozen
    teacher, UniKD's frozen AKEs, the offline teacher and its store)."""
    if not isinstance(target, type):
        return False
    from d2kd.meta_arch.teacher import FrozenTeacher

    bases = [FrozenTeacher]
    for module, name in (("d2kd.distill.unikd", "FrozenAKE"), ("d2kd.offline.teacher",
                                                                "OfflineTeacher")):
        try:
            bases.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return issubclass(target, tuple(bases))


def check_model_weights(cfg) -> None:
    """For a config whose model loads weights of its own (a distillation run: teacher, UniKD
    AKEs, knowledge store), checks them before launch.

    Each ``weights`` path is checked to exist (saying what to set when ``allow_uninitialized``
    is on but the path is not empty); then the model is built once on the CPU, which reads the
    files and runs the checks of the modules themselves (truncated or wrong checkpoint, missing or
    mis-shaped keys, teacher/student class counts, store contents). Their errors become one
    :class:`ConfigError`; a model without such modules is not built.
    """
    from d2kd.meta_arch.teacher import TeacherCheckpointError

    found = [(path, n) for path, n in _nodes(cfg.model, "model")
             if "_target_" in n and _loads_weights(_target_of(n))]
    if not found:
        return
    for path, node in found:
        weights = node.get("weights", "") or ""
        if isinstance(weights, str) and weights and "${" not in weights \
                and not os.path.isfile(weights):
            name = getattr(_target_of(node), "__name__", "")
            what = "the stage-1 (absorb) checkpoint" if "AKE" in name else "a trained teacher's checkpoint"
            if node.get("allow_uninitialized", False):
                raise ConfigError(
                    f"{path}.weights={weights!r} does not exist; {path}.allow_uninitialized=True "
                    f"applies to an empty path only: also set {path}.weights='' to run with "
                    f"random weights (smoke tests), or point {path}.weights at {what}")
            raise ConfigError(f"{path}.weights={weights!r} does not exist: point it at {what} "
                              f"(model_final.pth of that run)")
    from detectron2.config import instantiate

    errors = (TeacherCheckpointError, ValueError, TypeError, KeyError)
    try:
        from d2kd.distill.unikd import AKECheckpointError

        errors += (AKECheckpointError,)
    except ImportError:  # pragma: no cover
        pass
    try:
        instantiate(cfg.model)
    except ConfigError:
        raise
    except errors as e:
        from .errors import D2KDUserError

        if isinstance(e, D2KDUserError):
            raise
        raise ConfigError(f"cannot build cfg.model: {e}") from e


def check_config(cfg, *, eval_only: bool = False, resume: bool = False,
                 before_launch: bool = False) -> None:
    """Fail-fast checks of a loaded config; raises one clear error or returns.

    Checks: the parts ``train_net.py`` needs exist; ``train.device`` exists on this machine; every
    data set is registered; the checkpoint to start from (``last_checkpoint`` with ``--resume``,
    else ``train.init_checkpoint``) exists and is not truncated. ``before_launch`` (the launching
    process of ``train_net.py``, once): also the image files of the data sets
    (:func:`check_dataset_files`) and the weights the model loads itself
    (:func:`check_model_weights`).
    """
    for key in REQUIRED + (() if eval_only else REQUIRED_TRAIN):
        if _select(cfg, key) is None:
            raise ConfigError(f"the config has no {key!r} (see configs/common/train.py)")
    resolve_device(cfg)
    names = dataset_names(cfg, ("test",) if eval_only else ("train", "test"))
    check_datasets(names)
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
    if before_launch:
        check_dataset_files(names)
        check_model_weights(cfg)
