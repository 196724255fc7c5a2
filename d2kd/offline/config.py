"""Config-time helpers that turn an online distillation config into its offline twin.

An ``*_offline*`` config imports its online twin and calls :func:`make_offline`::

    from d2kd.offline.config import make_offline
    from .dino_to_frcnn_R18_builtin import dataloader, lr_multiplier, model, optimizer, train

    make_offline(model, dataloader, store="./output/knowledge/unikd_dino_to_frcnn_R18_builtin")

which rewrites two nodes (everything else, the student and the methods included, is unchanged):

- ``model.teacher``: ``L(OfflineTeacher)(store=..., weights=<the teacher's weights>,
  expected=dict(teacher=<the teacher's model config>, losses="${...losses}"),
  flip_channels=..., amp_dtype=...)`` (the last two copied from the FrozenTeacher). The teacher
  is still *named* by the config (its model config and weights path, so overrides such as
  ``model.teacher.weights=...`` keep working), but it is only fingerprinted, never built.
- ``dataloader.train``: ``L(build_knowledge_train_loader)(store=..., dataset=..., mapper=<the
  online mapper>, total_batch_size=..., num_workers=...)``: the online mapper with the store's
  views in place of its random augmentation, and the stored knowledge attached.

The dump reads the same config (``python -m d2kd.tools.dump_knowledge --config-file
<offline config>``; ``--output`` defaults to ``model.teacher.store``).
"""
from detectron2.config import LazyCall as L
from omegaconf import DictConfig

from .data import build_knowledge_train_loader
from .identity import config_target
from .teacher import OfflineTeacher

__all__ = ["make_offline", "offline_teacher", "knowledge_train_loader"]



def offline_teacher(teacher: DictConfig, store: str) -> DictConfig:
    """The ``L(OfflineTeacher)`` node that stands for ``teacher`` (an ``L(FrozenTeacher)`` node)."""
    if "model" not in teacher or "weights" not in teacher:
        raise ValueError(f"expected an L(FrozenTeacher)(model=..., weights=...) node, got {config_target(teacher)}")
    return L(OfflineTeacher)(
        store=store,
        # A plain dict: instantiate() leaves its contents unbuilt. "${...losses}" is model.losses.
        expected={"teacher": teacher.model, "losses": "${...losses}"},
        weights=teacher.weights,
        allow_uninitialized=teacher.get("allow_uninitialized", False),
        # how the teacher is run changes its knowledge: carried through, part of the identity
        flip_channels=teacher.get("flip_channels", False),
        amp_dtype=teacher.get("amp_dtype", None),
    )


def knowledge_train_loader(train: DictConfig, store: str) -> DictConfig:
    """The offline twin of a ``build_detection_train_loader`` node."""
    node = L(build_knowledge_train_loader)(
        store=store,
        dataset=train.dataset,
        mapper=train.mapper,
        total_batch_size=train.total_batch_size,
    )
    for key in train.keys():
        if key not in ("_target_", "dataset", "mapper", "total_batch_size"):
            node[key] = train._get_node(key)
    if "names" in train.dataset:
        node.dataset_names = "${.dataset.names}"
    return node


def make_offline(model: DictConfig, dataloader: DictConfig, store: str) -> None:
    """Rewrites ``model.teacher`` and ``dataloader.train`` in place (module doc)."""
    model.teacher = offline_teacher(model.teacher, store)
    dataloader.train = knowledge_train_loader(dataloader.train, store)
