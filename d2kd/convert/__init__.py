"""Checkpoints of other frameworks as d2kd checkpoints (Hugging Face transformers folders)."""
from .errors import ConversionError
from .hf import Converted, build_model_config, convert_hf_folder, is_hf_folder, load_hf_for_model, overrides

__all__ = [k for k in globals().keys() if not k.startswith("_")]
