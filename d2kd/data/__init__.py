"""The built-in "shapes" data set (generator and registration) and data recipes.

Importing this package registers ``d2kd_shapes_{train,val}`` and ``d2kd_shapes_tiny_{train,val}``
in detectron2's ``DatasetCatalog``/``MetadataCatalog`` (idempotent; nothing is generated until a
split is first loaded). See :mod:`d2kd.data.shapes` for the data and :mod:`d2kd.data.builtin`
for where and how it is written.
"""
from .builtin import (
    DEFAULT_SPEC,
    TINY_SPEC,
    datasets_root,
    ensure_shapes,
    load_shapes,
    register_all_shapes,
    register_shapes,
    shapes_dir,
)
from .shapes import CLASSES, GENERATOR_VERSION, ShapesSpec, layout_statistics
from .transforms import detr_augmentations

register_all_shapes()

__all__ = [
    "CLASSES",
    "DEFAULT_SPEC",
    "GENERATOR_VERSION",
    "TINY_SPEC",
    "ShapesSpec",
    "datasets_root",
    "detr_augmentations",
    "ensure_shapes",
    "layout_statistics",
    "load_shapes",
    "register_all_shapes",
    "register_shapes",
    "shapes_dir",
]
