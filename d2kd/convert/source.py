"""A checkpoint's tensors, taken by name while converting, so that leftovers can be reported."""
from typing import Dict, List

import torch

from .errors import ConversionError


class TensorSource:
    """The checkpoint's tensors, taken one by one, so that what is left over can be reported."""

    def __init__(self, state: Dict[str, torch.Tensor]):
        self.state = dict(state)
        self.used = set()

    def take(self, *candidates: str) -> torch.Tensor:
        """The first of ``candidates`` present (tied heads may be stored under one name only)."""
        for name in candidates:
            if name in self.state:
                self.used.add(name)
                return self.state[name]
        raise ConversionError(f"the checkpoint has none of {list(candidates)}")

    def take_module(self, out: Dict[str, torch.Tensor], target: str, *candidates: str, params=("weight", "bias")):
        for p in params:
            out[f"{target}.{p}"] = self.take(*(f"{c}.{p}" for c in candidates))

    def left_over(self) -> List[str]:
        return sorted(set(self.state) - self.used)
