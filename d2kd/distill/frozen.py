"""Checks for frozen modules loaded from a checkpoint (the distillation teacher, UniKD's AKEs).

They live here, below the meta-architectures, because methods load frozen modules of their own
(:class:`~d2kd.distill.unikd.FrozenAKE`); :mod:`d2kd.meta_arch.teacher` uses the same checks.
"""
from typing import Mapping

import torch
from torch import nn

__all__ = ["TeacherCheckpointError", "check_state_dict_fits"]


class TeacherCheckpointError(RuntimeError):
    """The teacher checkpoint is missing, unreadable or does not fit the teacher config."""


def check_state_dict_fits(
    state: Mapping[str, torch.Tensor], model: nn.Module, source: str, what: str = "teacher"
) -> None:
    """Raises :class:`TeacherCheckpointError` unless ``state`` has exactly ``model``'s keys/shapes.

    The message lists the missing, unexpected and mis-shaped keys (the first few of each), and
    says so plainly when the mismatch is the number of classes of a classification layer.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        (k, tuple(state[k].shape), tuple(expected[k].shape))
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"{what} checkpoint {source!r} does not fit the {what} config:"]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            lines.append(f"  {title}: {', '.join(items[:5])}{more}")
    for k, got, want in mismatched[:5]:
        lines.append(f"  shape of {k}: checkpoint {got}, config {want}")
    class_keys = [m for m in mismatched if "class" in m[0] or "cls" in m[0]]
    if class_keys:
        k, got, want = class_keys[0]
        lines.append(
            f"  (the class counts differ: {k} has {got[0]} rows in the checkpoint and "
            f"{want[0]} in the config; the models must be trained on the same classes)"
        )
    raise TeacherCheckpointError("\n".join(lines))
