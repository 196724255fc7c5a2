"""Fixtures of the engine tests: train_net.py loaded as a module, and the key=value overrides
that shrink the built-in Faster R-CNN baseline to a model a test can train in seconds."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_NET = os.path.join(ROOT, "train_net.py")
CONFIG = os.path.join(ROOT, "configs/baselines/faster_rcnn_R18_fpn_builtin.py")

TINY = (
    "dataloader.train.dataset.names=d2kd_shapes_tiny_train",
    "dataloader.test.dataset.names=d2kd_shapes_tiny_val",
    "dataloader.train.mapper.augmentations.0.short_edge_length=128",  # the tiny images' size
    "dataloader.test.mapper.augmentations.0.short_edge_length=128",
    "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
    "model.backbone.out_channels=32",
    "model.roi_heads.batch_size_per_image=32",
    "model.roi_heads.box_head.fc_dims=[32,32]",
    "model.roi_heads.box_predictor.input_shape.channels=32",
    "model.proposal_generator.post_nms_topk=[100,100]",
    "optimizer.lr=0.005",
    "train.log_period=1",
    "train.seed=0",
)


class TrainNet:
    """train_net.py and the paths/overrides the engine tests run it with."""

    path = TRAIN_NET
    config = CONFIG
    tiny = TINY

    def __init__(self):
        spec = importlib.util.spec_from_file_location("d2kd_train_net_under_test", TRAIN_NET)
        self.module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.module)

    def args(self, *argv):
        return self.module.default_argument_parser().parse_args(list(argv))


@pytest.fixture(scope="session")
def train_net():
    return TrainNet()
