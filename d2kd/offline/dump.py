"""Dumping a teacher's knowledge into a store (what ``python -m d2kd.tools.dump_knowledge`` runs).

For a distillation config (online, or its offline twin), :func:`dump_knowledge`:

1. checks that every method of ``model.losses`` supports offline distillation;
2. builds the distiller with a real :class:`~d2kd.meta_arch.FrozenTeacher` (from the offline
   config's description when given one), the training data set and its mapper;
3. plans ``images x K views`` items (item ``k`` = image ``k // K`` under view ``k % K``) in shards
   of ``shard_size`` items, and for every shard not yet in the store: maps its items through
   :class:`~d2kd.offline.views.ViewMapper`, batches items of the same input size (so no image is
   padded to another's size and the knowledge of an image does not depend on its batch), runs a
   teacher-only step per batch and collects each method's ``export_knowledge``;
   online, an image is padded to the largest of its batch instead. The stored knowledge equals
   the online one whenever the teacher's features at an image's cells ignore the padding
   (masks, valid ratios and views handle the rest; tested to 1e-5 on mixed sizes); a DETR
   teacher's channel mapper takes GroupNorm statistics over the padded map, so its knowledge
   of a padded image depends on its online batch, and the store holds the padding-free value
   (tests/offline/test_dump.py states the measured difference);
4. writes the shard (atomic; the index follows), logging progress and an ETA.

Before each batch the global random generators (torch, numpy, random) and every
``torch.Generator`` a method holds are reseeded from ``(seed, position of the batch's first item)``,
so the knowledge of an item depends only on the dump's seed and its place in the plan: a dump
resumed after a crash writes exactly what an uninterrupted one would have.
"""
import copy
import logging
import random
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from omegaconf import OmegaConf

from d2kd.distill.base import DistillStep
from d2kd.meta_arch.base import normalized_targets, run_teacher
from d2kd.meta_arch.teacher import FrozenTeacher

from .identity import check_unique_keys, config_target, dataset_identity, method_identity, teacher_identity
from .store import FLOAT_DTYPES, KnowledgeStore, KnowledgeStoreError, StoreWriter, image_key
from .teacher import OfflineTeacher, losses_nodes
from .views import ViewMapper, views_from_augmentations, views_identity

__all__ = ["dump_knowledge", "teacher_parts", "seed_batch"]

logger = logging.getLogger(__name__)


def teacher_parts(teacher_node):
    """``(model config, weights, {allow_uninitialized, flip_channels, amp_dtype})`` of an
    ``L(FrozenTeacher)`` or ``L(OfflineTeacher)`` node."""
    target = config_target(teacher_node)
    options = {"allow_uninitialized": bool(teacher_node.get("allow_uninitialized", False)),
               "flip_channels": bool(teacher_node.get("flip_channels", False)),
               "amp_dtype": teacher_node.get("amp_dtype", None)}
    if isinstance(target, type) and issubclass(target, OfflineTeacher):
        return teacher_node.expected.teacher, teacher_node.get("weights", ""), options
    if isinstance(target, type) and issubclass(target, FrozenTeacher):
        return teacher_node.model, teacher_node.get("weights", ""), options
    raise KnowledgeStoreError(f"model.teacher calls {target}: dump_knowledge needs a FrozenTeacher or an "
                              "OfflineTeacher (a distillation config)")


def seed_batch(seed: int, position: int, methods: Sequence[torch.nn.Module]) -> None:
    """Seeds every random generator a teacher-only step may draw from (module doc)."""
    s = (int(seed) * 1_000_003 + int(position)) % (2**63 - 1)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)
    for method in methods:
        for module in method.modules():
            for value in vars(module).values():
                if isinstance(value, torch.Generator):
                    value.manual_seed(s)


def _check_offline_support(nodes: Dict) -> None:
    bad = []
    for name, node in nodes.items():
        target = config_target(node)
        if not getattr(target, "supports_offline", False):
            bad.append(f"{name} ({getattr(target, '__name__', target)})")
    if not nodes:
        raise KnowledgeStoreError("model.losses is empty: there is no knowledge to dump")
    if bad:
        raise KnowledgeStoreError(
            f"{', '.join(bad)} do(es) not support offline distillation (supports_offline is False): "
            "remove them from model.losses for the dump and train them online")


def _format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _batches(inputs: List[dict], batch_size: int) -> List[List[int]]:
    """Indices of ``inputs`` grouped by input size (first-seen order), chunked to ``batch_size``."""
    groups: Dict[tuple, List[int]] = {}
    for i, x in enumerate(inputs):
        groups.setdefault(tuple(x["image"].shape[-2:]), []).append(i)
    out = []
    for idx in groups.values():
        out += [idx[j:j + batch_size] for j in range(0, len(idx), batch_size)]
    return out


def dump_knowledge(cfg, output: str, *, resume: bool = False, num_views: int = 2, shard_size: int = 256,
                   batch_size: int = 1, float_dtype: str = "float16", seed: int = 0,
                   device: Optional[str] = None, command: Optional[Sequence[str]] = None) -> KnowledgeStore:
    """Dumps the knowledge of ``cfg``'s teacher and methods into ``output`` (module doc).

    Args:
        cfg: a loaded distillation LazyConfig (overrides applied).
        output: the store directory.
        resume: continue an unfinished store with the same identity and plan.
        num_views: K views per image (:func:`~d2kd.offline.views.views_from_augmentations`).
        shard_size: items per shard.
        batch_size: images per teacher step (only images of the same input size are batched).
        float_dtype: storage dtype of floating tensors (``"float16"`` or ``"float32"``).
        seed: the dump seed (part of the plan: a resume must use the same).
        device: where the teacher runs (default ``cfg.train.device``).
        command: the command line, recorded in ``store.json``.

    Returns the finished store, opened for reading.
    """
    if float_dtype not in FLOAT_DTYPES:
        raise KnowledgeStoreError(f"--float-dtype must be one of {FLOAT_DTYPES}, got {float_dtype!r}")
    if shard_size < 1 or batch_size < 1:
        raise KnowledgeStoreError("--shard-size and --batch-size must be positive")
    from d2kd.engine.config import dataset_errors, dataset_names

    teacher_cfg, weights, options = teacher_parts(cfg.model.teacher)
    method_nodes = losses_nodes(cfg.model.losses)
    _check_offline_support(method_nodes)
    if not weights and not options["allow_uninitialized"]:
        from d2kd.meta_arch.teacher import TeacherCheckpointError

        raise TeacherCheckpointError("no teacher checkpoint given: set model.teacher.weights")

    # The data first: a data problem fails before the models are built.
    names = dataset_names(cfg, ("train",))
    with dataset_errors(names):
        dicts = instantiate(cfg.dataloader.train.dataset)
    if not isinstance(dicts, (list, tuple)):
        raise KnowledgeStoreError("dataloader.train.dataset must give a list of dicts, got "
                                  f"{type(dicts).__name__}")
    check_unique_keys(dicts)
    base_mapper = instantiate(cfg.dataloader.train.mapper)
    augs = getattr(getattr(base_mapper, "augmentations", None), "augs", None)
    if augs is None:
        raise KnowledgeStoreError("dataloader.train.mapper must be a detectron2 DatasetMapper (with augmentations)")
    views, dropped = views_from_augmentations(augs, num_views)
    view_mapper = ViewMapper(base_mapper, views)

    identity = {
        "teacher": teacher_identity(teacher_cfg, weights, flip_channels=options["flip_channels"],
                                    amp_dtype=options["amp_dtype"]),
        "dataset": dataset_identity(dicts, names),
        "methods": {name: method_identity(node) for name, node in method_nodes.items()},
        "views": views_identity(views, view_mapper.image_format, dropped),
    }
    K = len(views)
    header = {
        "identity": identity,
        "plan": {"num_images": len(dicts), "num_views": K, "num_items": len(dicts) * K,
                 "shard_size": int(shard_size), "seed": int(seed), "batch_size": int(batch_size)},
        "float_dtype": float_dtype,
        "dump": {"command": list(command or sys.argv), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }
    with StoreWriter(output, header, resume=resume) as writer:  # locks the store (one dump at a time)
        pending = writer.pending_shards()
        logger.info("Knowledge store %s: %d images x %d views = %d items in %d shards; %d to write%s",
                    output, len(dicts), K, len(dicts) * K, writer.num_shards, len(pending),
                    " (resumed)" if resume and len(pending) < writer.num_shards else "")

        if pending:
            model_cfg = copy.deepcopy(cfg.model)
            model_cfg.teacher = L(FrozenTeacher)(model=teacher_cfg, weights=weights, **options)
            torch.manual_seed(seed)
            model = instantiate(model_cfg)
            device = device or str(OmegaConf.select(cfg, "train.device", default="cpu"))
            model.to(device)
            model.train()  # as in online training (the teacher stays in eval mode)
            methods = dict(model.distill_losses.items())
            _write_shards(writer, model, methods, dicts, view_mapper, pending, K, batch_size, seed, device)
    store = KnowledgeStore(output, verify="size")
    logger.info("Knowledge store %s complete: %.1f MB", output, store.total_bytes() / 1e6)
    return store


def _write_shards(writer, model, methods, dicts, view_mapper, pending, K, batch_size, seed, device):
    total = sum(len(writer.shard_items(s)) for s in pending)
    done, start, last_log = 0, time.perf_counter(), 0.0
    window = 8 * batch_size  # images mapped (decoded) at once: bounds the memory on large images
    for count, shard in enumerate(pending):
        positions = list(writer.shard_items(shard))
        records = [(image_key(dicts[k // K]["image_id"]), k % K) for k in positions]
        items: List[Optional[dict]] = [None] * len(positions)
        for w0 in range(0, len(positions), window):
            inputs = [view_mapper(dicts[k // K], k % K) for k in positions[w0:w0 + window]]
            for batch in _batches(inputs, batch_size):
                batched = [inputs[i] for i in batch]
                seed_batch(seed, positions[w0 + batch[0]], list(methods.values()))
                exported = _teacher_step(writer, model, methods, batched, device)
                for j, i in enumerate(batch):
                    items[w0 + i] = {name: exported[name][j] for name in methods}
        writer.write_shard(shard, records, items)
        done += len(positions)
        now = time.perf_counter() - start
        if now - last_log > 10 or count == len(pending) - 1 or count == 0:
            last_log = now
            rate = done / max(now, 1e-9)
            logger.info("shard %d/%d written (%d/%d items of this run, %.1f items/s, ETA %s)", shard + 1,
                        writer.num_shards, done, total, rate, _format_eta((total - done) / max(rate, 1e-9)))


def _teacher_step(writer, model, methods, batched, device) -> Dict[str, List[dict]]:
    """One teacher-only step: ``{method: per-image knowledge}``."""
    step = DistillStep(batched_inputs=batched, targets=normalized_targets(batched, device),
                       max_iter=getattr(model, "max_iter", 0))
    with torch.no_grad():
        run_teacher(model.teacher, methods.values(), step)
        if "teacher_features" not in writer.header["dump"]:
            _record_features(writer, step)
        exported = {}
        for name, method in methods.items():
            per_image = method.export_knowledge(step)
            if len(per_image) != len(batched):
                raise KnowledgeStoreError(f"{name}.export_knowledge returned {len(per_image)} items "
                                          f"for {len(batched)} images")
            exported[name] = per_image
    return exported


def _record_features(writer: StoreWriter, step: DistillStep) -> None:
    """Notes the teacher's feature pyramid (for the storage comparison of :mod:`.cost`)."""
    view = step.teacher
    writer.header["dump"]["teacher_features"] = [
        {"stride": int(s), "channels": int(f.shape[1])} for f, s in zip(view.features, view.strides)]
    writer.header["dump"]["input_size"] = list(view.images.image_sizes[0])
    writer.header["dump"]["size_divisibility"] = int(getattr(view.model, "size_divisibility", 32) or 1)
    writer.save_header()
