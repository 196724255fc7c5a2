"""Hugging Face model folders (``config.json`` + weights) as d2kd checkpoints.

A folder is read offline, as it lies on disk (for instance what a hub download left in the
cache); no model id is resolved. :func:`convert_hf_folder` gives the d2kd state dict and the d2kd
config values; :func:`load_hf_for_model` checks those values against an already built d2kd model
(``model.teacher.weights`` pointing at a folder) and returns the state dict to load.
"""
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from . import hf_dab_detr, hf_deformable_detr
from .errors import ConversionError

CONVERTERS = {"deformable_detr": hf_deformable_detr, "dab-detr": hf_dab_detr}

# what d2kd lacks for the other detection models transformers has
MISSING = {
    "detr": "DETR's single-scale encoder and full-attention decoder with learned queries",
    "conditional_detr": "Conditional DETR's conditional spatial cross-attention (single-scale, full attention)",
    "rt_detr": "RT-DETR's hybrid CNN encoder (AIFI + CCFM) and its ResNet-vd/HGNet backbones",
    "rt_detr_v2": "RT-DETRv2's hybrid encoder and discrete-sampling decoder",
    "grounding-dino": "Grounding DINO's text encoder and language-guided query selection",
    "table-transformer": "Table Transformer (a DETR)",
    "yolos": "YOLOS, a plain ViT detector",
    "d_fine": "D-FINE's fine-grained distribution refinement",
    "rf_detr": "RF-DETR's DINOv2 backbone",
    "lw_detr": "LW-DETR's ViT backbone",
}


def is_hf_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def read_config(folder: str) -> Dict[str, Any]:
    path = os.path.join(folder, "config.json")
    if not os.path.isdir(folder):
        raise ConversionError(f"{folder!r} is not a folder (a Hugging Face model folder holds config.json and weights)")
    if not os.path.isfile(path):
        raise ConversionError(f"{folder!r} is not a Hugging Face model folder: it has no config.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot read {path!r}: {e}") from e


def _load_file(path: str) -> Dict[str, torch.Tensor]:
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a weights file at all, ...
        raise ConversionError(f"cannot read weights file {path!r} (truncated or not a checkpoint?): {e}") from e
    if not isinstance(data, dict):
        raise ConversionError(f"weights file {path!r} holds no state dict")
    return data


def read_weights(folder: str) -> Dict[str, torch.Tensor]:
    """All tensors of the folder: ``model.safetensors``, ``pytorch_model.bin``, or their shards."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return _load_file(path)
        index = path + ".index.json"
        if os.path.isfile(index):
            try:
                with open(index) as f:
                    shards = sorted(set(json.load(f)["weight_map"].values()))
            except (OSError, ValueError, KeyError) as e:
                raise ConversionError(f"cannot read shard index {index!r}: {e}") from e
            state = {}
            for shard in shards:
                shard_path = os.path.join(folder, shard)
                if not os.path.isfile(shard_path):
                    raise ConversionError(f"shard {shard_path!r} listed in {index!r} is missing")
                state.update(_load_file(shard_path))
            return state
    raise ConversionError(f"Hugging Face folder {folder!r} has config.json but no weights "
                          "(model.safetensors or pytorch_model.bin)")


def _normalisation(folder: str) -> Dict[str, Any]:
    """pixel_mean/std (0-255, RGB) of the folder's image processor; ImageNet's if it has none."""
    mean, std, scale = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 1 / 255
    path = os.path.join(folder, "preprocessor_config.json")
    if os.path.isfile(path):
        try:
            with open(path) as f:
                proc = json.load(f)
        except (OSError, ValueError) as e:
            raise ConversionError(f"cannot read {path!r}: {e}") from e
        mean, std = proc.get("image_mean", mean), proc.get("image_std", std)
        scale = proc.get("rescale_factor", scale) if proc.get("do_rescale", True) else 1.0
    return {"pixel_mean": [round(m / scale, 4) for m in mean], "pixel_std": [round(s / scale, 4) for s in std]}


def _converter(cfg: Dict[str, Any], folder: str):
    kind = cfg.get("model_type")
    if kind in CONVERTERS:
        conv = CONVERTERS[kind]
        archs = cfg.get("architectures") or [conv.ARCHITECTURE]
        if conv.ARCHITECTURE not in archs:
            raise ConversionError(f"{folder!r} holds a {archs} model: d2kd converts {conv.ARCHITECTURE} "
                                  "(a detector with its prediction heads)")
        return conv
    what = MISSING.get(kind, "this architecture")
    raise ConversionError(f"{folder!r}: model_type {kind!r} ({', '.join(cfg.get('architectures') or [])}) is not "
                          f"supported: d2kd lacks {what}. Supported: {sorted(CONVERTERS)}")


def class_names(cfg: Dict[str, Any]) -> List[str]:
    id2label = cfg.get("id2label") or {}
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


@dataclass
class Converted:
    """A converted checkpoint.

    Attributes:
        state: the d2kd state dict.
        values: d2kd config values, keys relative to the model config (``model.`` for a
            detector config, ``model.teacher.model.`` for a distillation teacher).
        model_config: the d2kd model config file they apply to (``configs/common/models/``).
        classes: the class names, in the order of the class heads' rows.
    """

    state: Dict[str, torch.Tensor]
    values: Dict[str, Any]
    model_config: str
    classes: List[str] = field(default_factory=list)


def select_classes(converted: Converted, classes: Sequence[str], class_heads: Sequence[str]) -> None:
    """Keeps (and orders) the class-head rows of ``classes``, matched by name (case-insensitive)."""
    index = {n.lower(): i for i, n in enumerate(converted.classes)}
    missing = [c for c in classes if c.lower() not in index]
    if missing:
        raise ConversionError(f"classes {missing[:5]} are not among the checkpoint's {len(index)} classes "
                              f"(id2label: {converted.classes[:5]}...)")
    rows = torch.tensor([index[c.lower()] for c in classes])
    for key in list(converted.state):
        if key.startswith(tuple(class_heads)):
            converted.state[key] = converted.state[key].index_select(0, rows)
    converted.values["num_classes"] = len(classes)
    converted.classes = list(classes)


def convert_hf_folder(folder: str, classes: Optional[Sequence[str]] = None) -> Converted:
    """Reads a transformers detector folder as a d2kd checkpoint.

    Args:
        folder: holds ``config.json`` and ``model.safetensors`` / ``pytorch_model.bin``.
        classes: keep only these classes, in this order, matched by name with ``id2label``
            (e.g. a data set's ``thing_classes``); None keeps all.
    """
    cfg = read_config(folder)
    conv = _converter(cfg, folder)
    values = conv.config_values(cfg)  # unsupported options fail before the weights are read
    state, unused = conv.convert_state(read_weights(folder), cfg)
    if unused:
        raise ConversionError(f"{folder!r}: weights d2kd's {conv.MODEL_CONFIG} has no place for "
                              f"(an option d2kd lacks?): {unused[:5]}" + (f" (+{len(unused) - 5} more)" if len(unused) > 5 else ""))
    values.update(_normalisation(folder))
    converted = Converted(state, values, conv.MODEL_CONFIG, class_names(cfg))
    if classes is not None:
        select_classes(converted, classes, conv.CLASS_HEADS)
    return converted


def model_config_path(name: str) -> str:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(root, "configs", "common", "models", f"{name}.py")
    if not os.path.isfile(path):
        raise ConversionError(f"d2kd model config {path!r} not found (is d2kd installed from its source tree?)")
    return path


def overrides(values: Dict[str, Any], prefix: str = "model.") -> List[str]:
    """``key=value`` strings for ``train_net.py`` / ``LazyConfig.apply_overrides``."""
    return [f"{prefix}{k}={v!r}" if isinstance(v, str) else f"{prefix}{k}={v}" for k, v in values.items()]


def build_model_config(converted: Converted):
    """The d2kd model config (a LazyConfig node) of a converted checkpoint."""
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(model_config_path(converted.model_config))
    LazyConfig.apply_overrides(cfg, overrides(converted.values))
    return cfg.model


def _model_value(model: nn.Module, key: str):
    """The value of config key ``key`` as seen on a built d2kd DETR (None: not checkable)."""
    parts = key.split(".")
    if parts[0] in ("encoder", "decoder") and len(parts) == 2:
        module = getattr(model, parts[0])
        layers = module.layers
        name = parts[1]
        if name == "num_layers":
            return len(layers)
        if not len(layers):
            return None
        layer = layers[0]
        if name == "ffn_dim":
            return layer.ffn.linear1.out_features
        if name == "activation":
            act = layer.ffn.activation
            return "gelu" if isinstance(act, nn.GELU) else "prelu" if isinstance(act, nn.PReLU) else "relu"
        attn = getattr(layer, "cross_attn", None) or getattr(layer, "self_attn", None) or layer
        if name in ("num_heads", "num_points"):
            return getattr(attn, name, None)
        if name == "share_heads" and hasattr(module, "class_heads"):
            return len(module.class_heads) == 1
        if name == "anchor_pos" and hasattr(module, "query_pos_head"):
            return module.query_pos_head is not None
        if name == "final_norm" and hasattr(module, "norm"):
            return not isinstance(module.norm, nn.Identity)
        return getattr(module, name, None)  # box_refine, point_anchors, raw_refinement, ...
    if parts[0] == "position_embedding" and len(parts) == 2:
        return getattr(model.position_embedding, parts[1], None)
    if key in ("pixel_mean", "pixel_std") and hasattr(model, key):
        return [round(float(v), 4) for v in getattr(model, key).flatten()]
    if len(parts) == 1 and hasattr(model, key):
        return getattr(model, key)
    return None  # backbone values are checked through the weights' shapes


def load_hf_for_model(folder: str, model: nn.Module) -> Dict[str, torch.Tensor]:
    """The state dict of ``folder`` for the built d2kd ``model``, after checking that ``model``
    has the structure the checkpoint was trained with (what shapes alone cannot tell: two-stage,
    box refinement, query type, ...). Raises :class:`ConversionError` naming each difference."""
    converted = convert_hf_folder(folder)
    if getattr(model, "num_classes", None) not in (None, converted.values["num_classes"]):
        raise ConversionError(
            f"{folder!r} predicts {converted.values['num_classes']} classes (config.json id2label), the teacher "
            f"config {model.num_classes} (the student's data). Convert it keeping the student's classes by name: "
            f"python -m d2kd.tools.convert_checkpoint {folder} teacher.pth --dataset <train dataset> "
            "and set model.teacher.weights=teacher.pth"
        )
    check_model_values(model, converted.values, folder)
    return fill_step_counters(converted.state, model)


def check_model_values(model: nn.Module, values: Dict[str, Any], source: str) -> None:
    """Raises :class:`ConversionError` naming every config value ``model`` differs in."""
    wrong = []
    for key, want in values.items():
        got = _model_value(model, key)
        if got is not None and got != want and not key.endswith("dropout"):
            wrong.append(f"{key}={want!r} (the teacher config has {got!r})")
    if wrong:
        hint = (" (RGB, as the checkpoint was trained; model.teacher.flip_channels=True if the student's "
                "data is BGR)") if any(w.startswith("pixel_") for w in wrong) else ""
        raise ConversionError(f"{source!r} was trained with a model the teacher config differs from; set "
                              + "; ".join(wrong) + hint
                              + " (python -m d2kd.tools.convert_checkpoint prints every value)")


def fill_step_counters(state: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Adds the ``num_batches_tracked`` counters a model with trainable BatchNorm expects."""
    for key in model.state_dict():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    return state


def load_release_for_model(state: Dict[str, torch.Tensor], model: nn.Module, source: str):
    """A release's state dict (DINO: IDEA-Research, detrex; detrex Deformable DETR) converted for
    the built d2kd ``model`` (structure checked), or None when ``state`` is none of these."""
    from .releases import find_release

    conv = find_release(state)
    if conv is None:
        return None
    out, values, _ = conv.convert_release(state, num_classes=getattr(model, "num_classes", None))
    check_model_values(model, values, source)
    return fill_step_counters(out, model)
