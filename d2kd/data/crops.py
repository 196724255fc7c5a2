"""Object-crop classification, the image-level task that pretrains the built-in backbones.

The built-in analogue of ImageNet: square crops around the labelled objects of images from the
shapes generator's ``"pretrain"`` split (disjoint from ``d2kd_shapes_train``/``val``: image ``i``
of a split depends only on ``(spec, split, i)``), labelled with the object's class, plus crops of
background (textures, clutter, distractors, partial shapes) labelled ``len(CLASSES)``. A backbone
that tells these apart has learned the cues the detector needs (corners, dots, notches, gaps,
stripe directions) before detection training starts.

Crop geometry: a square of side ``context * max(w, h)`` (at least ``min_side`` pixels) around the
object's visible box, its centre jittered by up to 10% of the side, cut from the image padded with
its edge pixels and resized to ``crop_size``. Background crops are squares of side 16 to 96 px
that contain no object centre and overlap every object box by IoU < 0.2.
"""
import multiprocessing
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from PIL import Image

from .shapes import CLASSES, ShapesSpec, make_image

__all__ = ["CropSpec", "BACKGROUND", "make_crops", "crops_of_image"]

BACKGROUND = len(CLASSES)  # label of background crops


@dataclass(frozen=True)
class CropSpec:
    """Everything that determines a crop data set (with the shapes spec it is cut from).

    Args:
        num_images: images of the ``"pretrain"`` split to cut crops from.
        crop_size: side of every crop after resizing, in pixels.
        context: crop side as a multiple of the object's longer box side.
        min_side: smallest crop side before resizing.
        background_per_image: background crops per image.
        seed: seed of the crop jitter and background positions.
    """

    num_images: int = 2500
    crop_size: int = 64
    context: float = 1.3
    min_side: int = 24
    background_per_image: int = 2
    seed: int = 0

    def __post_init__(self):
        if self.num_images < 1 or self.crop_size < 16 or self.context < 1.0 or self.min_side < 4:
            raise ValueError(f"bad crop spec {self}")


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one XYXY box with [N, 4] XYXY boxes."""
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def _cut(image: np.ndarray, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """The square of ``side`` centred at (cx, cy), edge-padded where it leaves the image,
    resized to ``size`` x ``size`` (bilinear). image: [H, W, 3] uint8 -> [size, size, 3] uint8."""
    pad = int(np.ceil(side)) + 1
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    x0, y0 = cx - side / 2 + pad, cy - side / 2 + pad
    box = (x0, y0, x0 + side, y0 + side)
    return np.asarray(Image.fromarray(padded).resize((size, size), Image.BILINEAR, box=box))


def crops_of_image(shapes: ShapesSpec, crops: CropSpec, index: int) -> Tuple[np.ndarray, np.ndarray]:
    """Crops of image ``index`` of the ``"pretrain"`` split.

    Returns:
        images: [K, crop_size, crop_size, 3] uint8, **BGR** (the channel order of detectron2's
            loaders, which the built-in detector configs read).
        labels: [K] int64, class index or :data:`BACKGROUND`.
    """
    image, layout = make_image(shapes, "pretrain", index)
    rng = np.random.default_rng(np.random.SeedSequence(entropy=crops.seed, spawn_key=(index,)))
    S = layout.size
    out, labels = [], []
    boxes = np.array([[x, y, x + w, y + h] for _, x, y, w, h in layout.annotations], dtype=np.float64)
    for label, x, y, w, h in layout.annotations:
        side = max(crops.context * max(w, h), crops.min_side)
        cx, cy = x + w / 2 + rng.uniform(-0.1, 0.1) * side, y + h / 2 + rng.uniform(-0.1, 0.1) * side
        out.append(_cut(image, cx, cy, side, crops.crop_size))
        labels.append(label)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2 if len(boxes) else np.zeros((0, 2))
    made = 0
    for _ in range(20 * crops.background_per_image):
        if made == crops.background_per_image:
            break
        side = float(np.exp(rng.uniform(np.log(16), np.log(96))))
        x0, y0 = rng.uniform(0, S - side, size=2)
        box = np.array([x0, y0, x0 + side, y0 + side])
        if len(boxes):
            inside = ((centres >= box[:2]) & (centres <= box[2:])).all(1)
            if inside.any() or (_iou(box, boxes) >= 0.2).any():
                continue
        out.append(_cut(image, x0 + side / 2, y0 + side / 2, side, crops.crop_size))
        labels.append(BACKGROUND)
        made += 1
    if not out:
        return np.zeros((0, crops.crop_size, crops.crop_size, 3), np.uint8), np.zeros((0,), np.int64)
    return np.stack(out)[..., ::-1].copy(), np.array(labels, dtype=np.int64)


def _crops_task(args):
    return crops_of_image(*args)


def make_crops(shapes: ShapesSpec, crops: CropSpec, num_workers: Optional[int] = None
               ) -> Tuple[np.ndarray, np.ndarray]:
    """All crops of the first ``crops.num_images`` images of the ``"pretrain"`` split, in image
    order (the result does not depend on ``num_workers``).

    Returns ([N, crop_size, crop_size, 3] uint8 BGR, [N] int64 labels).
    """
    tasks = [(shapes, crops, i) for i in range(crops.num_images)]
    if num_workers is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover
            cores = os.cpu_count() or 1
        num_workers = 1 if crops.num_images < 100 else max(1, min(4, cores))
    if num_workers > 1 and not multiprocessing.current_process().daemon:
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with ctx.Pool(num_workers) as pool:
            parts = pool.map(_crops_task, tasks, chunksize=16)
    else:
        parts = [_crops_task(t) for t in tasks]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images, labels
