"""Compiled operators of d2kd (``d2kd._C``) with their pure-PyTorch references."""
from .assignment import assignment_to_indices, batched_linear_sum_assignment, linear_sum_assignment
from .extension import extension_available, has_kernel, registered_ops
from .ms_deform_attn import (
    multi_scale_deformable_attention,
    multi_scale_deformable_attention_reference,
)

__all__ = [k for k in globals().keys() if not k.startswith("_")]
