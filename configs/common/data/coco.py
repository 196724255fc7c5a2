# COCO 2017 read from $DETECTRON2_DATASETS/coco (detectron2's "coco_2017_train", "coco_2017_val"),
# as detectron2's configs/common/data/coco.py: multi-scale training (short edge 640..800, long
# edge <= 1333), horizontal flip, 16 images per batch, COCO evaluation on val2017.
# Differences: boxes only (no instance masks are read: d2kd's models are detectors), and
# COCOEvaluator's fast C++ path only where detectron2's compiled ops load.
#
# DETR-style augmentation (flip, random crop half of the time, short edge 480..800), for DETRs:
#     from ..common.data.coco import dataloader, detr_train_augmentations
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

from d2kd.data import detr_augmentations
from d2kd.engine.defaults import detectron2_ops_available

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(
                short_edge_length=(640, 672, 704, 736, 768, 800),
                sample_style="choice",
                max_size=1333,
            ),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
        use_instance_mask=False,
    ),
    total_batch_size=16,
    num_workers=4,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333),
        ],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)

dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset.names}",
    use_fast_impl=detectron2_ops_available(),
)

# DETR (Carion et al. 2020) / Deformable DETR / DINO training augmentation.
detr_train_augmentations = L(detr_augmentations)(
    short_edges=(480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800),
    max_size=1333,
    crop_short_edges=(400, 500, 600),
    crop_size=(384, 600),
)
