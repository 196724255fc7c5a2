"""Augmentation recipes shared by the data configs (detectron2 ``Augmentation`` lists)."""
from typing import List, Sequence

import detectron2.data.transforms as T

__all__ = ["detr_augmentations"]


def detr_augmentations(short_edges: Sequence[int], max_size: int,
                       crop_short_edges: Sequence[int], crop_size: Sequence[int],
                       crop_prob: float = 0.5) -> List[T.Augmentation]:
    """DETR's training augmentation (Carion et al. 2020, sec. A.4) as one detectron2 list.

    Horizontal flip; then with probability ``crop_prob`` a resize of the short edge to one of
    ``crop_short_edges`` and a random crop of ``crop_size = (min, max)`` pixels per side; then a
    resize of the short edge to one of ``short_edges`` (long edge <= ``max_size``). DETR's
    "one of two chains" is the same thing, since both chains end with that resize.
    COCO: ``short_edges=(480, 512, ..., 800), max_size=1333, crop_short_edges=(400, 500, 600),
    crop_size=(384, 600)``. Use it as ``mapper.augmentations = L(detr_augmentations)(...)``.
    """
    lo, hi = (int(v) for v in crop_size)
    if not 0 < lo <= hi:
        raise ValueError(f"crop_size must be (min, max) with 0 < min <= max, got {crop_size}")
    crop = T.AugmentationList([
        T.ResizeShortestEdge(tuple(crop_short_edges), sample_style="choice"),
        T.RandomCrop("absolute_range", (lo, hi)),
    ])
    return [
        T.RandomFlip(horizontal=True),
        T.RandomApply(crop, prob=crop_prob),
        T.ResizeShortestEdge(tuple(short_edges), max_size=max_size, sample_style="choice"),
    ]
