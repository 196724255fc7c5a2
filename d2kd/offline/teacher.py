"""The teacher of offline distillation: a description checked against a store, never run.

In an offline config ``model.teacher`` is an :class:`OfflineTeacher` instead of a
:class:`~d2kd.meta_arch.FrozenTeacher`. It holds the teacher's model config *unbuilt* (inside a
plain dict, which detectron2's ``instantiate`` leaves alone) and its weights path, and checks,
when the model is built, that the store was dumped from exactly that teacher (config and sha256
of the weights file) and with the same configuration of every distillation method; nothing of the
teacher is built or loaded. The distiller then runs no teacher pass: ``step.teacher`` is None
and ``step.knowledge`` comes from the inputs (see :mod:`d2kd.offline.data`).

    model.teacher = L(OfflineTeacher)(
        store="./output/knowledge/...",
        expected=dict(teacher=<the teacher's model config>, losses="${...losses}"),
        weights="<the teacher checkpoint>",
    )

``simulate=True`` (smoke tests, no store): the teacher *is* built (from ``expected.teacher``)
and each step's knowledge is computed by a teacher-only pass and the methods'
``export_knowledge``, then rounded through the store's encoding, exactly as a dump would;
the store is not read.
"""
import logging
import os
from typing import Dict, List, Mapping, Optional

import torch
from torch import nn

from d2kd.distill.base import DistillStep
from d2kd.meta_arch.base import KnowledgeSource, run_teacher
from d2kd.meta_arch.teacher import FrozenTeacher, TeacherCheckpointError

from .identity import config_target, describe_differences, method_identity, teacher_identity
from .store import (
    HEADER,
    FLOAT_DTYPES,
    FORMAT,
    KnowledgeStoreError,
    StoreMismatchError,
    StoreMissingError,
    read_header,
    content_uid,
    decode_item,
    encode_item,
)

__all__ = ["OfflineTeacher", "losses_nodes", "family_of_config", "num_classes_of_config"]

logger = logging.getLogger(__name__)


def losses_nodes(losses) -> Dict[str, Mapping]:
    """``{name: LazyCall node}`` of a distiller's ``losses`` config (a dict, or ``L(dict)(...)``)."""
    if losses is None:
        return {}
    target = config_target(losses)
    if target is not None and target not in (dict,) and not (isinstance(target, type) and issubclass(
            target, dict)):
        raise TypeError(f"model.losses must be a dict of methods, got a call of {target}")
    return {str(k): losses[k] for k in losses.keys() if k != "_target_"}


def family_of_config(model_cfg) -> str:
    """The family (``"detr"``, ``"rcnn"``, ``"dense"``, ``"other"``) of an unbuilt model config."""
    from detectron2.modeling.meta_arch.dense_detector import DenseDetector
    from detectron2.modeling.meta_arch.rcnn import GeneralizedRCNN

    from d2kd.detr.base import DETRBase

    target = config_target(model_cfg)
    if isinstance(target, type):
        for cls, family in ((DETRBase, "detr"), (GeneralizedRCNN, "rcnn"), (DenseDetector, "dense")):
            if issubclass(target, cls):
                return family
    return "other"


def num_classes_of_config(model_cfg) -> Optional[int]:
    """The class count of an unbuilt DETR / detectron2 detector config (None if not found)."""
    for path in ("num_classes", "roi_heads.num_classes", "head.num_classes"):
        node = model_cfg
        try:
            for part in path.split("."):
                node = node[part]
        except (KeyError, TypeError, AttributeError, Exception):
            continue
        if isinstance(node, int):
            return node
    return None


class OfflineTeacher(KnowledgeSource):
    """A teacher known by its config and weights, whose knowledge is read from a store (the
    :class:`~d2kd.meta_arch.base.KnowledgeSource` of offline distillation).

    Args:
        store: the knowledge store directory (its ``store.json`` is read and compared).
        expected: ``{"teacher": model config, "losses": the distiller's losses config}`` — what
            the store must have been dumped with. A plain dict, so neither is built.
        weights: the teacher checkpoint the store was dumped with (fingerprinted, not loaded).
        allow_uninitialized: accept ``weights=""`` (a store dumped from a random teacher; tests).
        flip_channels, amp_dtype: how the teacher was run for the dump (those of
            :class:`~d2kd.meta_arch.FrozenTeacher`; part of the store's identity).
        simulate: no store; compute each step's knowledge with the built teacher (module doc).
        simulate_float_dtype: the storage dtype ``simulate`` rounds through.
    """

    offline = True

    def __init__(
        self,
        *,
        store: str = "",
        expected: Mapping,
        weights: str = "",
        allow_uninitialized: bool = False,
        simulate: bool = False,
        simulate_float_dtype: str = "float16",
        flip_channels: bool = False,
        amp_dtype: Optional[str] = None,
    ):
        super().__init__()
        if not isinstance(expected, Mapping) or "teacher" not in expected:
            raise TypeError("OfflineTeacher needs expected=dict(teacher=<teacher model config>, "
                            "losses=<losses config>)")
        if not weights and not allow_uninitialized:
            raise TeacherCheckpointError(
                "no teacher checkpoint given: set model.teacher.weights to the checkpoint the "
                "knowledge store was dumped with (it is fingerprinted, not loaded)")
        if simulate_float_dtype not in FLOAT_DTYPES:
            raise ValueError(f"simulate_float_dtype must be one of {FLOAT_DTYPES}")
        self.store = store
        self.weights = weights
        self.flip_channels = bool(flip_channels)
        self.amp_dtype = amp_dtype
        self.teacher_config = expected["teacher"]
        self.losses_config = losses_nodes(expected.get("losses"))
        self.family = family_of_config(self.teacher_config)
        self.num_classes = num_classes_of_config(self.teacher_config)
        self.simulate = simulate
        self.simulate_float_dtype = simulate_float_dtype
        self.uid: Optional[str] = None
        self.frozen = None
        if self.family == "other":
            raise TypeError(f"the offline teacher's config builds {config_target(self.teacher_config)}, "
                            "not a supported detector (d2kd DETR, GeneralizedRCNN, RetinaNet, FCOS)")
        if simulate:
            from detectron2.config import instantiate

            logger.warning("OfflineTeacher(simulate=True): the teacher runs on every step and no "
                           "store is read (smoke tests only)")
            self.frozen = FrozenTeacher(instantiate(self.teacher_config), weights,
                                        allow_uninitialized=allow_uninitialized, amp_dtype=amp_dtype,
                                        flip_channels=flip_channels)
        else:
            self._check_store()
        super().train(False)

    @property
    def model(self) -> Optional[nn.Module]:
        """The built teacher in ``simulate`` mode, else None (nothing of the teacher is built)."""
        return self.frozen.model if self.frozen is not None else None

    def train(self, mode: bool = True):
        return super().train(False)

    def _check_store(self) -> None:
        if not self.store:
            raise StoreMissingError("model.teacher.store is empty: set it to the knowledge store "
                                    "directory written by python -m d2kd.tools.dump_knowledge")
        path = os.path.join(self.store, HEADER)
        try:
            header = read_header(self.store)
        except FileNotFoundError:
            raise StoreMissingError(
                f"no knowledge store at {self.store!r} ({HEADER} not found): dump it first with "
                "python -m d2kd.tools.dump_knowledge --config-file <this config> --output "
                f"{self.store}") from None
        if header.get("format") != FORMAT:
            raise StoreMismatchError(f"{path} is not a d2kd knowledge store")
        identity = header["identity"]
        expected = teacher_identity(self.teacher_config, self.weights, flip_channels=self.flip_channels,
                                    amp_dtype=self.amp_dtype)
        lines = describe_differences(identity["teacher"], expected, "teacher")
        if lines:
            raise StoreMismatchError(f"{path} was dumped from another teacher:\n  " + "\n  ".join(lines))
        stored_methods = identity["methods"]
        for name, node in self.losses_config.items():
            if name not in stored_methods:
                raise StoreMismatchError(
                    f"{path} holds no knowledge for method {name!r} (it holds "
                    f"{sorted(stored_methods) or 'none'}): dump the store with this config")
            lines = describe_differences(stored_methods[name], method_identity(node),
                                         f"losses.{name}")
            if lines:
                raise StoreMismatchError(
                    f"{path} was dumped with another configuration of {name!r}:\n  "
                    + "\n  ".join(lines))
        self.uid = content_uid(header)
        logger.info("Offline teacher: %s matches the config (teacher %s, methods %s)", self.store,
                    identity["teacher"].get("class"), ", ".join(sorted(self.losses_config)))

    def knowledge(self, step, losses: Mapping[str, nn.Module], device) -> List[Dict[str, Dict[str, torch.Tensor]]]:
        """Per image of ``step``, ``{method name: {key: tensor}}`` on ``device``, for every method of
        ``losses``: read from the inputs (attached by the knowledge loader), or computed
        (``simulate``)."""
        if self.simulate:
            return self._simulated(step, losses, device)
        out = []
        for b, x in enumerate(step.batched_inputs):
            stored = x.get("knowledge")
            if stored is None:
                raise KnowledgeStoreError(
                    f"input {b} (image_id {x.get('image_id')!r}) carries no stored knowledge: offline "
                    "training reads its data through d2kd.offline.build_knowledge_train_loader "
                    "(dataloader.train of the *_offline configs)")
            source = x.get("knowledge_source")
            if self.uid is not None and (source is None or source[0] != self.uid):
                raise StoreMismatchError(
                    f"input {b} (image_id {x.get('image_id')!r}) carries knowledge from another store "
                    f"than {self.store} (model.teacher.store and the data loader's store differ)")
            item = {}
            for name in losses:
                if name not in stored:
                    raise StoreMismatchError(f"input {b} has no stored knowledge for {name!r} "
                                             f"(it has {sorted(stored)})")
                item[name] = {k: t.to(device, non_blocking=True) for k, t in stored[name].items()}
            out.append(item)
        return out

    def _simulated(self, step, losses, device):
        t_step = DistillStep(batched_inputs=step.batched_inputs, targets=step.targets,
                             iteration=step.iteration, max_iter=step.max_iter)
        run_teacher(self.frozen, list(losses.values()), t_step)
        out = [{} for _ in step.batched_inputs]
        for name, method in losses.items():
            for b, tensors in enumerate(method.export_knowledge(t_step)):
                out[b][name] = tensors
        decoded = []
        for item in out:
            encoded = encode_item(item, self.simulate_float_dtype)
            schema = {m: {k: {"source_dtype": s} for k, (_, s) in keys.items()} for m, keys in encoded.items()}
            arrays = {m: {k: a for k, (a, _) in keys.items()} for m, keys in encoded.items()}
            decoded.append({m: {k: t.to(device) for k, t in keys.items()}
                            for m, keys in decode_item(arrays, schema).items()})
        return decoded
