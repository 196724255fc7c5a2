# The built-in "shapes" data set (d2kd.data.shapes), CPU-sized: the twin of ./coco.py.
# Images are SIZE x SIZE (192 by default); 12 classes, so detector configs set num_classes=12
# (or NUM_CLASSES from this file). Tiny variant for smoke tests: "d2kd_shapes_tiny_train/val".
#
# DETR-style augmentation scaled to SIZE (flip, random crop half of the time, multi-scale):
#     from ..common.data.builtin import dataloader, detr_train_augmentations
#     dataloader.train.mapper.augmentations = detr_train_augmentations
from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.evaluation import COCOEvaluator

from d2kd.data import CLASSES, DEFAULT_SPEC, detr_augmentations  # registers the data sets
from d2kd.engine.defaults import detectron2_ops_available

SIZE = DEFAULT_SPEC.image_size
NUM_CLASSES = len(CLASSES)

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="d2kd_shapes_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            # The images are SIZE already; the resize makes other spec sizes and the tiny
            # variant come out at SIZE too.
            L(T.ResizeShortestEdge)(short_edge_length=SIZE, max_size=2 * SIZE),
            L(T.RandomFlip)(horizontal=True),  # every class is mirror-symmetric as a class
        ],
        image_format="BGR",
        use_instance_mask=False,
    ),
    total_batch_size=4,
    num_workers=1,  # decoding 4 small PNGs is ~10 ms: one worker keeps up on 2 cores
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="d2kd_shapes_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=SIZE, max_size=2 * SIZE),
        ],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=1,
)

dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset.names}",
    use_fast_impl=detectron2_ops_available(),  # the C++ COCOeval is missing on Python 3.11
)

# coco.py's DETR recipe scaled by SIZE / 800 (short edges 0.6..1.0 x SIZE, crops 0.48..0.75).
detr_train_augmentations = L(detr_augmentations)(
    short_edges=tuple(int(round(SIZE * f)) for f in (0.6, 0.68, 0.76, 0.84, 0.92, 1.0)),
    max_size=int(round(SIZE * 1333 / 800)),
    crop_short_edges=tuple(int(round(SIZE * f)) for f in (0.5, 0.625, 0.75)),
    crop_size=(int(round(SIZE * 0.48)), int(round(SIZE * 0.75))),
)
