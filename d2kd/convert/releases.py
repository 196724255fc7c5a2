"""Checkpoint files of other code bases (not Hugging Face folders), recognised by their key names."""
from typing import Dict, Optional

import torch

from . import detrex_deformable_detr, dino_release
from .errors import ConversionError

# each: detect(state) -> source or None, convert_release(state, num_classes), MODEL_CONFIG
RELEASES = (dino_release, detrex_deformable_detr)


def find_release(state: Dict[str, torch.Tensor]):
    """The converter module of ``state``'s code base, or None."""
    return next((conv for conv in RELEASES if conv.detect(state) is not None), None)


def convert_any_release(state: Dict[str, torch.Tensor], num_classes: Optional[int] = None):
    """``(d2kd state, config values, d2kd model config name)`` of a release state dict."""
    conv = find_release(state)
    if conv is None:
        raise ConversionError("not a checkpoint d2kd converts: none of a DINO release (IDEA-Research or detrex) "
                              "or a detrex Deformable DETR by its key names")
    out, values, _ = conv.convert_release(state, num_classes)
    return out, values, conv.MODEL_CONFIG
