"""Loading of the compiled extension ``d2kd._C``.

The extension is optional at import time: every op in :mod:`d2kd.ops` has a pure-PyTorch
reference that is used when the extension is missing (a source checkout that was never built,
or a build without the CUDA kernels when the input lives on a GPU).
"""
import logging
from typing import Optional

import torch

logger = logging.getLogger(__name__)

try:
    from d2kd import _C  # noqa: F401  (importing registers torch.ops.d2kd.*)

    EXTENSION_ERROR: Optional[str] = None
except ImportError as e:  # pragma: no cover - depends on the build
    _C = None
    EXTENSION_ERROR = str(e)


def extension_available() -> bool:
    """Whether ``d2kd._C`` was imported, i.e. ``torch.ops.d2kd.*`` are registered."""
    return _C is not None


def has_kernel(op_name: str, device_type: str) -> bool:
    """Whether the op ``d2kd::<op_name>`` has a kernel for ``device_type`` ("cpu" or "cuda")."""
    if _C is None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"d2kd::{op_name}", key)
    except RuntimeError:
        return False


def registered_ops():
    """Names of the ops registered under the ``d2kd`` namespace (empty without the extension)."""
    if _C is None:
        return []
    names = [s.split("::", 1)[1].split("(")[0].split(".")[0]
             for s in torch._C._dispatch_get_all_op_names() if s.startswith("d2kd::")]
    return sorted(set(names))
