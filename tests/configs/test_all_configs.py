"""Every runnable config under configs/ builds and trains for one step on a tiny input.

Discovery is automatic: every ``configs/**/*.py`` except ``configs/common/**`` and files whose
name starts with ``_`` (fragments). For each one: LazyConfig load, model + optimizer built from
the config, one training step on two tiny images with a couple of boxes (labels drawn from the
config's own class count), finite losses, at least one parameter changed, then an eval-mode
forward returning one result per image. COCO-sized configs run too: their data loaders are never
built and ``train.init_checkpoint`` is never loaded.

Hooks for configs that need them (see :mod:`d2kd.engine.smoke`): a top-level
``smoke_test = dict(overrides=[...], skip="reason")``; frozen teachers (``FrozenTeacher`` or any
callable taking ``allow_uninitialized``) are built with fresh weights instead of their checkpoint.
"""
import glob
import os

import pytest
from detectron2.config import LazyConfig

from d2kd.engine.smoke import run_smoke_step, smoke_skip_reason

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(ROOT, "configs")


def runnable_configs():
    """Paths (relative to configs/) of the configs that are meant to be run."""
    out = []
    for path in sorted(glob.glob(os.path.join(CONFIG_DIR, "**", "*.py"), recursive=True)):
        rel = os.path.relpath(path, CONFIG_DIR)
        if rel.split(os.sep)[0] == "common" or os.path.basename(rel).startswith("_"):
            continue
        out.append(rel)
    return out


CONFIGS = runnable_configs()


def test_discovery_finds_the_baselines():
    assert "baselines/faster_rcnn_R50_fpn_1x.py" in CONFIGS
    assert not any(c.startswith("common") for c in CONFIGS)


@pytest.mark.parametrize("rel", CONFIGS)
def test_config_trains_one_step(rel):
    cfg = LazyConfig.load(os.path.join(CONFIG_DIR, rel))
    reason = smoke_skip_reason(cfg)
    if reason:
        pytest.skip(reason)
    for part in ("model", "train"):
        assert part in cfg, f"{rel} has no {part!r}"
    result = run_smoke_step(cfg)
    assert result["losses"], f"{rel}: the model returned no losses in training mode"
    assert all(k.startswith("loss") for k in result["losses"]), result["losses"]
    assert result["changed"] > 0, f"{rel}: no parameter changed after an optimizer step"
    outputs = result["outputs"]
    assert len(outputs) == 2 and all("instances" in o for o in outputs), outputs
