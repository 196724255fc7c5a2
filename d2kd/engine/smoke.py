"""One training step of any config on a tiny made-up batch (what tests/configs runs on every
config, also usable from other tests).

Hooks a config can use (all optional):

- ``smoke_test = dict(overrides=["key=value", ...], skip="reason")`` at the top level of a
  config file: overrides applied (strictly, see :func:`d2kd.engine.config.apply_overrides`)
  before the model is built for the smoke test, e.g. to shrink a huge model; a non-empty
  ``skip`` skips the config with that reason.
- Frozen teachers need no hook: every node whose callable takes ``allow_uninitialized`` (d2kd's
  ``FrozenTeacher``) gets ``allow_uninitialized=True`` and ``weights=""``, i.e. a freshly
  initialised teacher instead of the checkpoint path of the config.
- ``train.init_checkpoint`` is never loaded, and the data loaders are never built.
- Files under ``configs/common/`` and files whose name starts with ``_`` are fragments to
  import, not runnable configs; they are not smoke-tested.
"""
import copy
import inspect
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from .config import apply_overrides


def _target_params(target) -> Sequence[str]:
    if isinstance(target, str):
        from detectron2.utils.registry import locate

        try:
            target = locate(target)
        except Exception:
            return ()
    try:
        return list(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return ()


def _walk(node) -> Iterable[DictConfig]:
    if isinstance(node, DictConfig):
        yield node
        for key in node.keys():
            child = node._get_node(key)
            if isinstance(child, (DictConfig, ListConfig)):
                yield from _walk(child)
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            child = node._get_node(i)
            if isinstance(child, (DictConfig, ListConfig)):
                yield from _walk(child)


def smoke_skip_reason(cfg) -> str:
    """The config's ``smoke_test.skip`` (empty: run it)."""
    return str(OmegaConf.select(cfg, "smoke_test.skip", default="") or "")


def prepare_smoke_config(cfg):
    """A copy of ``cfg`` ready for a smoke test (see the module doc for what changes)."""
    cfg = copy.deepcopy(cfg)
    overrides = OmegaConf.select(cfg, "smoke_test.overrides", default=None) or []
    apply_overrides(cfg, list(overrides))
    for node in _walk(cfg.model):
        if "_target_" not in node:
            continue
        params = _target_params(node._get_node("_target_")._value())
        if "allow_uninitialized" in params:
            node.allow_uninitialized = True
            if "weights" in params:
                node.weights = ""
    return cfg


def num_classes_of(model_cfg, default: int = 3) -> int:
    """The smallest ``num_classes`` found in the model config (a safe label range)."""
    found: List[int] = []
    for node in _walk(model_cfg):
        if "num_classes" in node:
            try:
                value = node.num_classes
            except Exception:
                continue
            if isinstance(value, int) and value > 0:
                found.append(value)
    return min(found) if found else default


def tiny_batch(
    num_classes: int,
    sizes: Sequence[Tuple[int, int]] = ((96, 128), (128, 96)),
    boxes_per_image: int = 2,
    seed: int = 0,
) -> List[Dict]:
    """Detectron2 ``batched_inputs``: uint8 CHW images of ``sizes`` (H, W) with a few boxes."""
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    batch = []
    for h, w in sizes:
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        xy = torch.rand(boxes_per_image, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5])
        wh = (0.2 + 0.3 * torch.rand(boxes_per_image, 2, generator=g)) * torch.tensor([w, h])
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w - 1.0, h - 1.0]))], dim=1)
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.randint(0, num_classes, (boxes_per_image,), generator=g)
        batch.append({"image": image, "instances": inst, "height": h, "width": w})
    return batch


def build_optimizer(cfg, model):
    """``cfg.optimizer`` for ``model``, or plain SGD when the config has none."""
    from detectron2.config import instantiate

    if "optimizer" not in cfg:
        return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    opt_cfg = copy.deepcopy(cfg.optimizer)
    opt_cfg.params.model = model
    return instantiate(opt_cfg)


def run_smoke_step(cfg, batch: Optional[List[Dict]] = None, seed: int = 0) -> Dict[str, object]:
    """Builds ``cfg.model`` (after :func:`prepare_smoke_config`) and its optimizer, runs one
    training step on ``batch`` (default :func:`tiny_batch`) and one eval-mode forward.

    Returns ``{"losses": {name: float}, "changed": #params changed, "outputs": eval outputs}``.
    Raises AssertionError on a non-finite loss.
    """
    from detectron2.config import instantiate
    from detectron2.utils.events import EventStorage

    torch.manual_seed(seed)
    cfg = prepare_smoke_config(cfg)
    model = instantiate(cfg.model)
    model.train()
    optimizer = build_optimizer(cfg, model)
    if batch is None:
        batch = tiny_batch(num_classes_of(cfg.model))
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with EventStorage(0):
        losses = model(batch)
        total = sum(losses.values())
        bad = {k: float(v.detach()) for k, v in losses.items() if not torch.isfinite(v).all()}
        assert not bad, f"non-finite losses: {bad}"
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            outputs = model(batch)
    changed = sum(1 for n, p in model.named_parameters()
                  if n in trainable and not torch.equal(p, trainable[n]))
    return {"losses": {k: float(v.detach()) for k, v in losses.items()}, "changed": changed,
            "outputs": outputs}
