"""Every built-in config that starts from a built-in pretrained backbone loads it: after
``train_net``'s loading step, the detector's ResNet equals the weights file, parameter by
parameter (the suffix matching of detectron2's checkpointer reaches ``backbone.bottom_up.*`` and
``student.backbone.bottom_up.*``; a frozen teacher is left alone)."""
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from d2kd.engine import backbone_pretrain as bp
from d2kd.engine.checkpoint import AtomicCheckpointer, check_checkpoint_file
from d2kd.engine.smoke import prepare_smoke_config

from .test_all_configs import CONFIG_DIR, CONFIGS

BUILTIN = [c for c in CONFIGS if c.endswith("_builtin.py")]


@pytest.fixture
def weights_dir(weights_root):
    """The session's tiny built-in backbones (tests/conftest.py)."""
    return str(weights_root)


def test_the_demo_configs_start_from_pretrained_backbones(weights_dir):
    for rel, depth in (("detr/dino_R50_builtin.py", 50), ("detr/dino_R18_builtin.py", 18),
                       ("baselines/faster_rcnn_R18_fpn_builtin.py", 18),
                       ("kd_detr/dino_to_frcnn_builtin.py", 18)):
        cfg = LazyConfig.load(os.path.join(CONFIG_DIR, rel))
        assert cfg.train.init_checkpoint == os.path.join(weights_dir, bp.SUBDIR, f"R-{depth}.pth"), rel


@pytest.mark.parametrize("rel", BUILTIN)
def test_builtin_config_loads_its_pretrained_backbone(rel, weights_dir):
    cfg = LazyConfig.load(os.path.join(CONFIG_DIR, rel))
    init = cfg.train.get("init_checkpoint", "")
    if not init or not bp.is_builtin_backbone(init):
        pytest.skip(f"{rel} does not start from a built-in pretrained backbone")
    check_checkpoint_file(init, what="train.init_checkpoint")  # the pre-launch check passes
    model = instantiate(prepare_smoke_config(cfg).model)
    AtomicCheckpointer(model).resume_or_load(init, resume=False)  # what train_net.py does
    stored = torch.load(init, weights_only=False)["model"]
    state = model.state_dict()
    prefix = next(p for p in ("student.backbone.bottom_up.", "backbone.bottom_up.")
                  if any(k.startswith(p) for k in state))
    compared = 0
    for key, value in stored.items():
        assert torch.equal(state[prefix + key], value), f"{rel}: {prefix + key} differs from {init}"
        compared += 1
    assert compared == len([k for k in state if k.startswith(prefix) and not k.endswith("num_batches_tracked")])
