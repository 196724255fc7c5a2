"""What a knowledge store was dumped from, and how two such descriptions are compared.

A store's identity (``store.json["identity"]``) has four parts; training refuses a store whose
identity differs from what its config describes, naming each difference:

- ``teacher``: the teacher's model config, canonical (interpolations resolved, callables as
  ``module.qualname``), a fingerprint of its weights file (size + sha256 of the bytes; None
  for a randomly initialised teacher), and how it runs (``flip_channels``, ``amp_dtype``). The
  teacher is never built to check this.
- ``dataset``: names (informative), number of images and a sha256 of every image's
  ``(image_id, file name)`` in data-set order.
- ``methods``: per distillation method, its class and the constructor arguments that define
  what it stores (:func:`method_identity`), with files it names (e.g. pretrained extractor
  weights) fingerprinted by content.
- ``views``: the image format and the list of deterministic views (:mod:`d2kd.offline.views`).
"""
import enum
import hashlib
import inspect
import json
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = [
    "canonical",
    "config_target",
    "file_fingerprint",
    "teacher_identity",
    "method_identity",
    "dataset_identity",
    "check_unique_keys",
    "describe_differences",
    "digest",
]

# Constructor arguments that weight a loss rather than define what is stored (see method_identity).
_LOSS_WEIGHT = re.compile(r"^((.*_)?weight|lambdas?(_.*)?|loss_.*)$")
_WEIGHT_FILE = re.compile(r"\.(pth|pkl|pt|ckpt|safetensors|npz)$")
_FINGERPRINTS: Dict[Tuple[str, int, int], dict] = {}


def digest(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj``."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    return f"{module}.{name}" if module and name else repr(obj)


def config_target(node) -> Optional[Any]:
    """The callable a LazyCall node calls (located when stored as a string), or None."""
    if not isinstance(node, (DictConfig, Mapping)) or "_target_" not in node:
        return None
    target = node._get_node("_target_")._value() if isinstance(node, DictConfig) else node["_target_"]
    if isinstance(target, str):
        from detectron2.utils.registry import locate

        try:
            return locate(target)
        except Exception:
            return target
    return target


def canonical(value: Any) -> Any:
    """A JSON value equal for equal configs: interpolations resolved, LazyCall targets and other
    callables as ``"module.qualname"``, tuples as lists, enums by name."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if k == "_target_":
                target = v
                if isinstance(v, str):
                    from detectron2.utils.registry import locate

                    try:
                        target = locate(v)
                    except Exception:
                        target = v
                out[k] = target if isinstance(target, str) else _qualname(target)
            else:
                out[str(k)] = canonical(v)
        return out
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, enum.Enum):
        return f"{_qualname(type(value))}.{value.name}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return canonical(value.item())
    if callable(value):
        return _qualname(value)
    return f"<{_qualname(type(value))}>"


def file_fingerprint(path: str) -> dict:
    """``{"file": base name, "bytes": size, "sha256": ...}`` of a local file (cached per process
    by path, size and modification time: a 1 GB checkpoint is hashed once)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _FINGERPRINTS:
        with open(path, "rb") as f:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
        _FINGERPRINTS[key] = {"file": os.path.basename(path), "bytes": st.st_size, "sha256": sha}
    return dict(_FINGERPRINTS[key])


def teacher_identity(model_cfg, weights: str, *, flip_channels: bool = False,
                     amp_dtype: Optional[str] = None) -> dict:
    """Identity of a teacher given its (unbuilt) model config and weights path ("" = random),
    and how it is run: ``flip_channels`` (channel order of its input) and ``amp_dtype``
    (autocast precision), both of :class:`~d2kd.meta_arch.FrozenTeacher`: either changes the
    knowledge it gives."""
    config = canonical(model_cfg)
    if weights:
        if not os.path.isfile(weights):
            from d2kd.meta_arch.teacher import TeacherCheckpointError

            raise TeacherCheckpointError(
                f"teacher checkpoint not found: {weights!r} (the offline teacher is identified by "
                "its weights file; set model.teacher.weights to the checkpoint the store was "
                "dumped with)")
        fingerprint = file_fingerprint(weights)
    else:
        fingerprint = None
    return {"class": config.get("_target_") if isinstance(config, dict) else None,
            "config_sha256": digest(config), "config": config, "weights": fingerprint,
            "flip_channels": bool(flip_channels), "amp_dtype": amp_dtype}


def _fingerprint_files(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _fingerprint_files(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fingerprint_files(v) for v in value]
    if isinstance(value, str) and _WEIGHT_FILE.search(value) and os.path.isfile(value):
        return file_fingerprint(value)
    return value


def method_identity(node) -> dict:
    """Identity of a distillation method from its (unbuilt) LazyCall node.

    ``{"class": "module.qualname", "args": {...}}``. The arguments compared are the class's
    ``knowledge_args`` when it declares them (the names of the constructor arguments that define
    what ``export_knowledge`` returns), else every argument except loss weights (names ``weight``,
    ``*_weight``, ``lambda*``, ``loss_*``). Strings naming existing weight files (``.pth``,
    ``.pkl``, ...) are replaced by the file's fingerprint.
    """
    target = config_target(node)
    if target is None:
        raise TypeError(f"a distillation method config must be a LazyCall node, got {node!r}")
    args = canonical({k: v for k, v in node.items() if k != "_target_"}) if isinstance(
        node, Mapping) else {}
    declared = getattr(target, "knowledge_args", None)
    if declared is not None:
        defaults = _defaults(target)
        args = {k: args.get(k, defaults.get(k)) for k in declared}
    else:
        args = {k: v for k, v in args.items() if not _LOSS_WEIGHT.match(k)}
    return {"class": _qualname(target), "args": _fingerprint_files(args)}


def _defaults(target) -> dict:
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return {}
    return {k: canonical(p.default) for k, p in params.items()
            if p.default is not inspect.Parameter.empty}


def check_unique_keys(dicts: Sequence[Mapping]) -> None:
    """Raises :class:`~d2kd.offline.store.KnowledgeStoreError` when two dataset dicts share an
    image key (:func:`~d2kd.offline.store.image_key`): their knowledge would overwrite each other."""
    from .store import KnowledgeStoreError, image_key

    seen: Dict[int, Any] = {}
    for d in dicts:
        key = image_key(d.get("image_id"))
        if key in seen:
            raise KnowledgeStoreError(
                f"image ids {seen[key]!r} and {d.get('image_id')!r} give the same store key {key}: "
                "every image of the data set needs its own image_id (duplicate ids?)")
        seen[key] = d.get("image_id")


def dataset_identity(dicts: Sequence[Mapping], names: Optional[Sequence[str]] = None) -> dict:
    """Identity of a list of detectron2 dataset dicts (in order)."""
    from .store import image_key

    h = hashlib.sha256()
    for d in dicts:
        h.update(f"{image_key(d.get('image_id'))}\t{os.path.basename(str(d.get('file_name', '')))}\n"
                 .encode("utf-8"))
    if isinstance(names, str):
        names = [names]
    return {"names": list(names) if names is not None else None, "num_images": len(dicts),
            "ids_sha256": h.hexdigest()}


def describe_differences(stored: Any, expected: Any, path: str,
                         sides: Tuple[str, str] = ("store", "config"), limit: int = 6) -> List[str]:
    """Human-readable differences between two identity trees (empty: they match).

    Under a ``config`` key whose sibling digest (``config_sha256``) matches nothing is reported;
    otherwise the first ``limit`` differing leaves are listed as ``path: store X, config Y``.
    """
    out: List[str] = []
    _diff(stored, expected, path, sides, out)
    if len(out) > limit:
        out = out[:limit] + [f"... and {len(out) - limit} more differences"]
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _diff(a: Any, b: Any, path: str, sides, out: List[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        if "config_sha256" in a and a.get("config_sha256") == b.get("config_sha256"):
            a = {k: v for k, v in a.items() if k != "config"}
            b = {k: v for k, v in b.items() if k != "config"}
        for k in sorted(set(a) | set(b)):
            sub = f"{path}.{k}" if path else k
            if k not in a:
                out.append(f"{sub}: {sides[0]} has none, {sides[1]} {_short(b[k])}")
            elif k not in b:
                out.append(f"{sub}: {sides[0]} {_short(a[k])}, {sides[1]} has none")
            elif k == "names":
                continue  # informative: the ids hash decides whether the data sets match
            else:
                _diff(a[k], b[k], sub, sides, out)
        return
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{path}[{i}]", sides, out)
        return
    if a != b and not (_is_num(a) and _is_num(b) and float(a) == float(b)):
        out.append(f"{path}: {sides[0]} {_short(a)}, {sides[1]} {_short(b)}")


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
