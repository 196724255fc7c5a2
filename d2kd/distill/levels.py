"""Pairing the multi-scale features of two detectors, for feature-level methods.

Teacher and student pyramids may differ (Faster R-CNN: strides 4..64; RetinaNet: 8..128;
DINO: 8..64). Levels are paired by stride; a level of one model with no same-stride level in the
other is left out of the pairing. Padding may make same-stride maps differ by a cell; the
student map is then resized to the teacher's.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F


def pair_levels(teacher_strides: Sequence[int], student_strides: Sequence[int]) -> List[Tuple[int, int]]:
    """``(teacher_level, student_level)`` index pairs of equal stride, finest first.

    Raises ValueError when the two pyramids share no stride at all.
    """
    pairs = [(i, list(student_strides).index(s)) for i, s in enumerate(teacher_strides) if s in student_strides]
    if not pairs:
        raise ValueError(f"teacher strides {list(teacher_strides)} and student strides "
                         f"{list(student_strides)} have no level in common")
    return pairs


def resize_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """x [B, C, h, w] bilinearly resized to ref's spatial size (no-op when equal)."""
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def valid_mask(image_sizes: Sequence[Tuple[int, int]], stride: int, shape: Tuple[int, int],
               device=None) -> torch.Tensor:
    """[B, 1, H, W] float, 1 on feature cells that cover the unpadded image, 0 on padding."""
    H, W = shape
    mask = torch.zeros(len(image_sizes), 1, H, W, device=device)
    for b, (h, w) in enumerate(image_sizes):
        mask[b, :, : max(1, -(-h // stride)), : max(1, -(-w // stride))] = 1
    return mask
