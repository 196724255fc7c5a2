"""Strict overrides and fail-fast config checks: each bad input is one error naming it."""
import os

import pytest
from detectron2.config import LazyConfig, instantiate

from d2kd.engine.config import apply_overrides, check_config, check_datasets
from d2kd.engine.errors import ConfigError, DatasetError
from d2kd.engine.model_zoo import LRMultiplierByName, resnet_out_channels

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(model="retinanet"):
    cfg = LazyConfig.load(os.path.join(ROOT, f"configs/common/models/{model}.py"))
    cfg.train = LazyConfig.load(os.path.join(ROOT, "configs/common/train.py")).train
    return cfg


def test_valid_overrides_apply():
    cfg = apply_overrides(_cfg(), [
        "train.max_iter=5",
        "model.backbone.bottom_up.stages.depth=18",
        "model.head.norm=GN",  # a constructor argument the config leaves at its default
        "+train.new_key=3",
        "train.ddp.find_unused_parameters=true",
    ])
    assert cfg.train.max_iter == 5 and cfg.train.new_key == 3
    assert cfg.model.head.norm == "GN" and cfg.train.ddp.find_unused_parameters is True
    # the depth change alone gives a consistent R-18 (P6 input follows res5's width)
    assert instantiate(cfg.model.backbone.top_block).p6.in_channels == resnet_out_channels(18)


@pytest.mark.parametrize("override, culprit, hint", [
    ("train.max_iterr=5", "train.max_iterr", "did you mean 'train.max_iter'"),
    ("trian.max_iter=5", "trian.max_iter", "did you mean 'train'"),
    ("model.head.nrom=GN", "model.head.nrom", "RetinaNetHead, which has no argument 'nrom'"),
    ("model.head.nrom=GN", "model.head.nrom", "did you mean 'model.head.norm'"),
    ("train.max_iter.x=5", "train.max_iter.x", "is a value, not a config node"),
])
def test_unknown_key_is_one_clear_error(override, culprit, hint):
    with pytest.raises(ConfigError) as e:
        apply_overrides(_cfg(), [override])
    msg = str(e.value)
    assert culprit in msg and hint in msg, msg


def test_check_config_names_missing_weights(tmp_path):
    cfg = apply_overrides(_cfg(), [f"train.output_dir={tmp_path}",
                                   "train.init_checkpoint=/nope.pth"])
    cfg.optimizer = {}
    cfg.lr_multiplier = {}
    cfg.dataloader = {"train": {"x": 1}}
    with pytest.raises(Exception, match="/nope.pth"):
        check_config(cfg)
    cfg.train.init_checkpoint = ""
    with pytest.raises(ConfigError, match="--eval-only needs weights"):
        check_config(cfg, eval_only=True)


def test_unregistered_dataset_is_named():
    with pytest.raises(DatasetError, match="'nope' is not registered"):
        check_datasets(["nope"])


def test_lr_multiplier_by_name():
    f = LRMultiplierByName({"backbone": 0.1})
    assert f("backbone.bottom_up.stem.conv1.weight") == 0.1
    assert f("student.backbone.res2.0.conv1.weight") == 0.1
    assert f("module.backbone.fpn_lateral2.weight") == 0.1
    assert f("head.cls_score.weight") == 1.0
    assert f("backbone_adapter.weight") == 1.0
