"""ResNet weights of other frameworks -> detectron2's ``ResNet`` (the DETR models' ``bottom_up``).

Two layouts are understood, both a ResNet v1.5 (stride in the 3x3 convolution, detectron2's
``stride_in_1x1=False``):

- transformers' ``ResNetBackbone``: ``embedder.embedder.{convolution,normalization}``,
  ``encoder.stages.<s>.layers.<b>.{layer.<k>,shortcut}.{convolution,normalization}``;
- torchvision's / timm's ``resnet*`` (also the IDEA-Research and detrex DETR releases):
  ``conv1``, ``bn1``, ``layer<s>.<b>.{conv<k>,bn<k>,downsample.{0,1}}``.

Keys map to detectron2's ``stem.conv1[.norm]``, ``res<s+2>.<b>.conv<k+1>[.norm]``,
``res<s+2>.<b>.shortcut[.norm]``.
"""
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .errors import ConversionError

_Rule = Tuple["re.Pattern", Callable[["re.Match"], str]]


def _rules(pairs) -> List[_Rule]:
    return [(re.compile(p), f) for p, f in pairs]


_HF = _rules([
    (r"embedder\.embedder\.convolution\.(\w+)", lambda m: f"stem.conv1.{m[1]}"),
    (r"embedder\.embedder\.normalization\.(\w+)", lambda m: f"stem.conv1.norm.{m[1]}"),
    (r"encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.convolution\.(\w+)",
     lambda m: f"res{int(m[1]) + 2}.{m[2]}.shortcut.{m[3]}"),
    (r"encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.normalization\.(\w+)",
     lambda m: f"res{int(m[1]) + 2}.{m[2]}.shortcut.norm.{m[3]}"),
    (r"encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.convolution\.(\w+)",
     lambda m: f"res{int(m[1]) + 2}.{m[2]}.conv{int(m[3]) + 1}.{m[4]}"),
    (r"encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.normalization\.(\w+)",
     lambda m: f"res{int(m[1]) + 2}.{m[2]}.conv{int(m[3]) + 1}.norm.{m[4]}"),
])

_TORCHVISION = _rules([
    (r"conv1\.(\w+)", lambda m: f"stem.conv1.{m[1]}"),
    (r"bn1\.(\w+)", lambda m: f"stem.conv1.norm.{m[1]}"),
    (r"layer(\d)\.(\d+)\.conv(\d)\.(\w+)", lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.{m[4]}"),
    (r"layer(\d)\.(\d+)\.bn(\d)\.(\w+)", lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}"),
    (r"layer(\d)\.(\d+)\.downsample\.0\.(\w+)", lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.{m[3]}"),
    (r"layer(\d)\.(\d+)\.downsample\.1\.(\w+)", lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}"),
])

_IGNORED = re.compile(r"(.*\.)?num_batches_tracked|fc\.(weight|bias)")


def _rename(key: str, rules: List[_Rule]) -> Optional[str]:
    for pattern, target in rules:
        m = pattern.fullmatch(key)
        if m:
            return target(m)
    return None


def convert_resnet(state: Dict[str, torch.Tensor], layout: str) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Renames a ResNet state dict (keys relative to the ResNet) to detectron2's names.

    Args:
        state: ``{name: tensor}`` of one ResNet, without any outer prefix.
        layout: "transformers" or "torchvision" (timm and the DETR releases use the latter).

    Returns:
        ``(renamed, left_over)``: the detectron2 state dict and the keys no rule matched
        (``num_batches_tracked`` and a classifier ``fc`` are dropped silently).
    """
    rules = {"transformers": _HF, "torchvision": _TORCHVISION}[layout]
    out, left = {}, []
    for key, value in state.items():
        if _IGNORED.fullmatch(key):
            continue
        new = _rename(key, rules)
        if new is None:
            left.append(key)
        else:
            out[new] = value
    return out, left


# ---- the backbone a transformers DETR config.json describes
_RESNET_DEPTHS = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}
_TIMM_RESNETS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152}


def _resnet_depth(depths, layer_type) -> int:
    depths = tuple(depths)
    if layer_type == "bottleneck" and depths == (3, 4, 6, 3):
        return 50
    depth = _RESNET_DEPTHS.get(depths)
    if depth is None or (depth < 50) != (layer_type == "basic"):
        raise ConversionError(f"backbone ResNet with {layer_type} blocks and stage depths {list(depths)} is not "
                              "one of R-18/34/50/101/152, the ResNets d2kd builds")
    return depth


def backbone_values(cfg: Dict[str, Any], last_only: bool = False,
                    timm_out_indices=None) -> Tuple[Dict[str, Any], str]:
    """The detectron2 ResNet of ``config.json``: (config values, key layout of its weights).

    Args:
        last_only: the model reads only the last stage (single-scale DETRs), whatever stages the
            config lists.
        timm_out_indices: the stages transformers 4.x configs imply when they name a timm model
            only (default: res3-res5, or res5 for one feature level).
    """
    if cfg.get("dilation"):
        raise ConversionError("dilation=True (a DC5 backbone): d2kd's DETR backbones have no dilated res5")
    bb = cfg.get("backbone_config")
    levels = cfg.get("num_feature_levels", 4)
    if bb is None and cfg.get("use_timm_backbone", True):  # transformers 4.x timm layout
        bb = {"model_type": "timm_backbone", "backbone": cfg.get("backbone", "resnet50"),
              "out_indices": timm_out_indices or ([2, 3, 4] if levels > 1 else [4])}
    if bb is None:
        raise ConversionError("config.json names no backbone (no backbone_config, use_timm_backbone=false)")
    kind = bb.get("model_type")
    if kind == "timm_backbone":
        name = bb.get("backbone") or cfg.get("backbone")
        if name not in _TIMM_RESNETS:
            raise ConversionError(f"timm backbone {name!r}: d2kd converts only {sorted(_TIMM_RESNETS)}")
        depth, stride_in_1x1, layout = _TIMM_RESNETS[name], False, "torchvision"
        stages = [int(i) for i in bb.get("out_indices", [2, 3, 4] if levels > 1 else [4])]
    elif kind == "resnet":
        layer_type = bb.get("layer_type", "bottleneck")
        depth = _resnet_depth(bb.get("depths", [3, 4, 6, 3]), layer_type)
        widths = [64, 128, 256, 512] if depth < 50 else [256, 512, 1024, 2048]
        if list(bb.get("hidden_sizes", widths)) != widths or bb.get("embedding_size", 64) != 64:
            raise ConversionError(f"backbone widths {bb.get('hidden_sizes')} (stem {bb.get('embedding_size')}) "
                                  f"differ from a standard R-{depth} ({widths}, stem 64)")
        if bb.get("downsample_in_first_stage", False):
            raise ConversionError("backbone downsample_in_first_stage=True has no detectron2 ResNet equivalent")
        stride_in_1x1, layout = bool(bb.get("downsample_in_bottleneck", False)), "transformers"
        names = bb.get("out_features") or [f"stage{i}" for i in bb.get("out_indices", [2, 3, 4])]
        stages = [int(str(n).replace("stage", "")) for n in names]
    else:
        raise ConversionError(f"backbone model_type {kind!r}: d2kd converts ResNet backbones only")
    if sorted(stages) != stages or not set(stages) <= {1, 2, 3, 4}:
        raise ConversionError(f"backbone outputs stages {stages}: expected consecutive ResNet stages 1-4")
    if last_only:
        if stages[-1] != 4:
            raise ConversionError(f"backbone outputs stages {stages}: a single-scale DETR reads the last (4)")
        stages = [4]
    values = {
        "backbone.bottom_up.stages.depth": depth,
        "backbone.bottom_up.stages.norm": "FrozenBN",
        "backbone.bottom_up.out_features": [f"res{s + 1}" for s in stages],
    }
    if depth >= 50:
        values["backbone.bottom_up.stages.stride_in_1x1"] = stride_in_1x1
    return values, layout
