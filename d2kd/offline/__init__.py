"""Offline distillation: dump the teacher's knowledge once, train from the store without it.

1. **Dump** (``python -m d2kd.tools.dump_knowledge --config-file CFG --output STORE``): builds
   the teacher and the methods of an (online or offline) distillation config, maps every training
   image under K deterministic views (:mod:`~d2kd.offline.views`), runs a teacher-only step per
   batch and writes each method's ``export_knowledge`` into a store (:mod:`~d2kd.offline.store`):
   sharded ``.npy`` files (memory-mapped when read), float16 floats, checksummed, written
   atomically, resumable (``--resume``). Each batch is seeded from the dump seed and its position
   alone, so a resumed dump equals an uninterrupted one.
2. **Train** with an ``*_offline*`` config: ``model.teacher`` is an
   :class:`~d2kd.offline.teacher.OfflineTeacher` (the teacher's config and weights path, checked
   against the store, never built) and ``dataloader.train`` is
   :func:`~d2kd.offline.data.build_knowledge_train_loader` (picks a stored view per sample,
   replays exactly its transform, attaches its knowledge). The distiller runs no teacher pass:
   ``step.teacher`` is None and ``step.knowledge[b][method]`` holds image b's stored tensors.

A store records what it was dumped from (:mod:`~d2kd.offline.identity`); training refuses a
store dumped from another teacher (config or weights), data set, method configuration, image
format, and any incomplete, truncated or corrupt shard, naming the file and the difference.
"""
from .data import KnowledgeMapper, build_knowledge_train_loader, check_dataset
from .identity import dataset_identity, method_identity, teacher_identity
from .store import (
    KnowledgeStore,
    KnowledgeStoreError,
    StoreCorruptError,
    StoreMismatchError,
    StoreMissingError,
    StoreWriter,
    image_key,
)
from .teacher import OfflineTeacher
from .views import View, ViewMapper, views_from_augmentations

__all__ = [
    "KnowledgeMapper",
    "KnowledgeStore",
    "KnowledgeStoreError",
    "OfflineTeacher",
    "StoreCorruptError",
    "StoreMismatchError",
    "StoreMissingError",
    "StoreWriter",
    "View",
    "ViewMapper",
    "build_knowledge_train_loader",
    "check_dataset",
    "dataset_identity",
    "image_key",
    "method_identity",
    "teacher_identity",
    "views_from_augmentations",
]
