"""Tiny DETR models built from the real model configs, and tiny detectron2 inputs."""
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_CLASSES = 3


def tiny_model_config(name: str = "dino", overrides=()):
    """configs/common/models/<name>.py shrunk to a CPU-test size (R-18, width 32, 1+2 layers).

    ``overrides``: extra ``"key=value"`` strings relative to ``model`` (e.g. ``"two_stage=True"``).
    """
    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "common", "models", f"{name}.py"))
    tiny = [
        f"num_classes={NUM_CLASSES}", "num_queries=12", "embed_dim=32",
        "backbone.bottom_up.stages.depth=18", "backbone.bottom_up.stages.norm=BN",
        "backbone.bottom_up.freeze_at=0", "encoder.num_layers=1", "decoder.num_layers=2",
        "encoder.ffn_dim=64", "decoder.ffn_dim=64",
    ]
    if name == "dino":
        tiny.append("denoising.num_queries=6")
    LazyConfig.apply_overrides(cfg, [f"model.{o}" for o in tiny + list(overrides)])
    return cfg.model


@pytest.fixture
def build_model():
    """``build_model(name="dino", overrides=(), seed=0)`` -> a tiny model from the config."""

    def build(name="dino", overrides=(), seed=0):
        torch.manual_seed(seed)
        return instantiate(tiny_model_config(name, overrides))

    return build


def make_input(height=64, width=80, num_objects=2, seed=None, scale=1.0):
    """One detectron2 input dict: a random uint8 image with ``num_objects`` random boxes.

    ``scale`` sets the original ("height", "width") relative to the network input.
    """
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g)
    inst = Instances((height, width))
    xy = torch.rand(num_objects, 2, generator=g) * torch.tensor([width * 0.6, height * 0.6])
    wh = 8 + torch.rand(num_objects, 2, generator=g) * torch.tensor([width * 0.3, height * 0.3])
    inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
    inst.gt_classes = torch.randint(0, NUM_CLASSES, (num_objects,), generator=g)
    return {"image": image, "instances": inst, "height": int(height * scale), "width": int(width * scale)}


@pytest.fixture(name="make_input")
def make_input_fixture():
    """:func:`make_input` (test modules cannot import conftest under importlib mode)."""
    return make_input


@pytest.fixture
def inputs():
    """Two images of different sizes (so one is padded), 3 and 1 objects."""
    return [make_input(64, 80, 3, seed=1), make_input(48, 64, 1, seed=2)]
