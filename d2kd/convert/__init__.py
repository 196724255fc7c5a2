"""Checkpoints of other frameworks as d2kd checkpoints: Hugging Face transformers folders
(Deformable DETR, DAB-DETR), the DINO releases (IDEA-Research, detrex) and detrex's Deformable DETR."""
from .errors import ConversionError
from .hf import (
    Converted,
    build_model_config,
    convert_hf_folder,
    is_hf_folder,
    load_hf_for_model,
    load_release_for_model,
    overrides,
)

__all__ = [k for k in globals().keys() if not k.startswith("_")]
