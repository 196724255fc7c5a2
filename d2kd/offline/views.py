"""Deterministic views: the transforms a knowledge store is dumped under and replayed with.

Stored knowledge belongs to one exact network input (teacher boxes in its coordinates, features
of its pixels), so random augmentation cannot be re-drawn during offline training. Instead each
image is dumped under K *views*, each a deterministic transform: resize of the short edge to
``short_edge`` (long edge <= ``max_size``), then a horizontal flip if ``flip``. The training
mapper picks one of the K views at random for each sample, applies exactly its transform through
the config's own ``DatasetMapper`` (same decoding, format and annotation handling as online) and
attaches that view's knowledge. The views are read from the online training augmentation:
the short-edge choices of its ``ResizeShortestEdge`` and the two flip states of its
``RandomFlip``; any other augmentation (e.g. DETR's random crop) is not replayed and is listed in
the store (``views.dropped``). With the built-in data (resize to 192 + random flip) K = 2 views
reproduce the online augmentation exactly.
"""
import copy
import logging
import sys
from dataclasses import asdict, dataclass
from typing import Dict, List, Sequence, Tuple

import detectron2.data.transforms as T
import numpy as np

__all__ = ["View", "ViewMapper", "views_from_augmentations", "views_identity"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class View:
    """One deterministic transform: resize (``short_edge`` 0: keep the size), then flip."""

    short_edge: int = 0
    max_size: int = 0  # 0: no limit on the long edge
    flip: bool = False

    def augmentations(self) -> List[T.Augmentation]:
        """The detectron2 augmentations that apply exactly this view (no randomness)."""
        augs: List[T.Augmentation] = []
        if self.short_edge:
            augs.append(T.ResizeShortestEdge(self.short_edge, max_size=self.max_size or sys.maxsize,
                                             sample_style="choice"))
        if self.flip:
            augs.append(T.RandomFlip(prob=1.0, horizontal=True))
        return augs

    def to_dict(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict) -> "View":
        return cls(short_edge=int(d["short_edge"]), max_size=int(d["max_size"]), flip=bool(d["flip"]))


def _walk(augs, found: dict) -> None:
    for a in augs:
        if isinstance(a, T.AugmentationList):
            _walk(a.augs, found)
        elif isinstance(a, T.ResizeShortestEdge):
            lo_hi = tuple(int(v) for v in a.short_edge_length)
            if a.is_range:  # endpoints and middle of the range
                lo_hi = (lo_hi[0], (lo_hi[0] + lo_hi[1]) // 2, lo_hi[1])
            found["edges"] = sorted(set(lo_hi), reverse=True)  # the last resize decides
            found["max_size"] = 0 if a.max_size >= sys.maxsize else int(a.max_size)
        elif isinstance(a, T.RandomFlip) and a.horizontal:
            found["flips"] = [True] if a.prob >= 1 else ([False, True] if a.prob > 0 else [False])
        else:
            found["dropped"].append(type(a).__name__ if not isinstance(a, T.RandomApply) else
                                    f"RandomApply({type(a.aug).__name__}, prob={a.prob})")


def views_from_augmentations(augmentations: Sequence, num_views: int) -> Tuple[List[View], List[str]]:
    """K views over the scale x flip choices of an online augmentation list.

    The online augmentation draws a short edge (S choices) and a flip state (F = 1 or 2)
    independently, so the views are a grid: ``ceil(K / F)`` short edges spread evenly over the
    S choices (the middle one when there is one; largest first), each under every flip state,
    the first K of that grid (all S x F when K is larger). Flip is never tied to scale: with
    K = 2 and a random flip the two views are one scale unflipped and flipped. A warning says
    when K views cannot cover the augmentation (fewer scales than it draws from).

    Returns ``(views, dropped)``, ``dropped`` naming the augmentations that are not replayed.
    """
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    found = {"edges": [0], "max_size": 0, "flips": [False], "dropped": []}
    _walk(list(augmentations), found)
    edges, flips = found["edges"], found["flips"]
    total = len(edges) * len(flips)
    if num_views > total:
        logger.warning("%d views asked, the augmentation has %d distinct resize/flip choices: "
                       "using those", num_views, total)
    num_edges = min(len(edges), -(-num_views // len(flips)))
    if num_edges == 1:
        picked = [edges[(len(edges) - 1) // 2]]
    else:
        picked = [edges[i] for i in np.round(np.linspace(0, len(edges) - 1, num_edges)).astype(int)]
    views = [View(e, found["max_size"], f) for e in picked for f in flips][:num_views]
    if len(views) < total:
        covered = sorted({v.short_edge for v in views}, reverse=True)
        logger.warning(
            "%d offline views cover %d of the %d resize/flip choices of the online augmentation "
            "(short edges %s of %s, flips %s): offline training sees less variety than online; "
            "dump with --num-views %d to cover all", len(views), len(views), total, covered, edges,
            sorted({v.flip for v in views}), total)
    if found["dropped"]:
        logger.warning("Offline views replay resize and flip only; not replayed: %s",
                       ", ".join(found["dropped"]))
    return views, found["dropped"]


def views_identity(views: Sequence[View], image_format: str, dropped: Sequence[str] = ()) -> dict:
    """The ``views`` part of a store's identity."""
    return {"image_format": image_format, "views": [v.to_dict() for v in views],
            "dropped": list(dropped)}


class ViewMapper:
    """Applies view ``v`` to a dataset dict through copies of a detectron2 ``DatasetMapper``
    whose augmentations are replaced by the view's: the dump and offline training call this same
    object, so the knowledge and the training input come from identical pixels and boxes."""

    def __init__(self, mapper, views: Sequence[View]):
        if not hasattr(mapper, "augmentations") or not callable(mapper):
            raise TypeError(
                "offline distillation replays its views through a detectron2 DatasetMapper (an "
                f"object with .augmentations); got {type(mapper).__name__}")
        self.views = list(views)
        self.mapper = mapper
        self._mappers = []
        for v in self.views:
            m = copy.copy(mapper)
            m.augmentations = T.AugmentationList(v.augmentations())
            self._mappers.append(m)

    def __len__(self) -> int:
        return len(self.views)

    @property
    def image_format(self) -> str:
        return getattr(self.mapper, "image_format", "")

    def __call__(self, dataset_dict: dict, view: int) -> dict:
        return self._mappers[view](dataset_dict)
