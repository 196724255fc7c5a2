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
from typing import Callable, Dict, List, Optional, Tuple

import torch

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
