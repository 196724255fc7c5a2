"""Tiny versions of the offline configs (and their online twins), a 6-image data set and a
teacher checkpoint, shared by the tests of this folder."""
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from d2kd.data import ShapesSpec, register_shapes
from d2kd.engine.config import apply_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATASET = "d2kd_offline_test"
register_shapes(DATASET, ShapesSpec(num_train=6, num_val=2, image_size=64, max_objects=6))

# DINO R-50 built-in teacher shrunk (R-18, width 32, 20 queries, 1 + 2 layers).
TEACHER = ["backbone.bottom_up.stages.depth=18", "embed_dim=32", "num_queries=20", "select_topk=20",
           "encoder.num_layers=1", "decoder.num_layers=2", "encoder.ffn_dim=64", "decoder.ffn_dim=64",
           "denoising.num_queries=4"]
FRCNN = ["backbone.out_channels=32", "roi_heads.box_head.fc_dims=[32,32]",
         "roi_heads.box_predictor.input_shape.channels=32", "roi_heads.batch_size_per_image=32"]
DINO_STUDENT = ["embed_dim=32", "num_queries=12", "select_topk=12", "encoder.num_layers=1", "decoder.num_layers=2",
                "encoder.ffn_dim=64", "decoder.ffn_dim=64", "denoising.num_queries=4"]
METHODS = {
    "unikd": ["ake.ake.embed_dim=32", "ake.ake.num_queries=10", "ake.ake.ffn_dim=64", "adaptor_ffn_dim=64",
              "adaptor_layers=1", "student_channels=32"],
    "kd_detr": ["num_general=8", "num_specific=8"],
}
# offline config -> (online twin, method, student overrides)
CONFIGS = {
    "unikd/dino_to_frcnn_R18_offline_builtin.py": ("unikd/dino_to_frcnn_R18_builtin.py", "unikd", FRCNN),
    "kd_detr/dino_to_frcnn_offline_builtin.py": ("kd_detr/dino_to_frcnn_builtin.py", "kd_detr", FRCNN),
    # the twin of d2kd's variant (the published default's batch-shared points cannot be stored)
    "kd_detr/dino_R50_to_R18_offline_builtin.py": ("kd_detr/dino_R50_to_R18_variant_builtin.py", "kd_detr",
                                                   DINO_STUDENT),
}


class Weights:
    """Checkpoints of the tiny models: ``teacher``, ``other`` (another teacher), ``ake`` (UniKD's
    stage-1 AKEs, so that every build of a UniKD config has the same frozen extractors)."""

    def __init__(self, teacher: str = "", other: str = "", ake: str = ""):
        self.teacher, self.other, self.ake = teacher, other, ake


def tiny_overrides(offline_rel: str, weights=None, online: bool = False):
    """The ``key=value`` overrides that shrink ``offline_rel`` (or its online twin); ``weights``:
    a :class:`Weights` (or a teacher checkpoint path)."""
    weights = weights if isinstance(weights, Weights) else Weights(teacher=weights or "")
    _, method, student = CONFIGS[offline_rel]
    teacher = "model.teacher.model." if online else "model.teacher.expected.teacher."
    out = ([teacher + o for o in TEACHER] + [f"model.student.{o}" for o in student]
           + [f"model.losses.{method}.{o}" for o in METHODS[method]]
           + [f"dataloader.train.dataset.names={DATASET}_train", "dataloader.train.total_batch_size=2",
              "dataloader.train.num_workers=0", f"model.teacher.weights={weights.teacher}"])
    if method == "unikd":
        out += [f"model.losses.unikd.ake.weights={weights.ake}",
                f"model.losses.unikd.ake.allow_uninitialized={not weights.ake}"]
    return out


def tiny_config(offline_rel: str, online: bool = False, weights=None, store: str = "", extra=()):
    """The offline config ``offline_rel`` (or its online twin) at test size on the 6-image data."""
    online_rel = CONFIGS[offline_rel][0]
    cfg = LazyConfig.load(config_path(online_rel if online else offline_rel))
    overrides = tiny_overrides(offline_rel, weights, online)
    if store:
        overrides += [f"model.teacher.store={store}", f"dataloader.train.store={store}"]
    return apply_overrides(cfg, overrides + list(extra))


def config_path(rel: str) -> str:
    return os.path.join(ROOT, "configs", rel)


class Tiny:
    """What the test modules use (they cannot import this conftest under importlib mode)."""

    config = staticmethod(tiny_config)
    overrides = staticmethod(tiny_overrides)
    path = staticmethod(config_path)


@pytest.fixture(scope="session")
def tiny():
    return Tiny


def save_teacher(cfg, path: str, seed: int) -> str:
    torch.manual_seed(seed)
    teacher = instantiate(cfg.model.teacher.expected.teacher)
    torch.save({"model": teacher.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Weights:
    """Checkpoints of the tiny teacher (two seeds) and of UniKD's AKEs."""
    root = tmp_path_factory.mktemp("weights")
    cfg = tiny_config("unikd/dino_to_frcnn_R18_offline_builtin.py")
    torch.manual_seed(2)
    ake = instantiate(cfg.model.losses.unikd.ake.ake)
    torch.save({"model": {"ake." + k: v for k, v in ake.state_dict().items()}}, str(root / "ake.pth"))
    return Weights(save_teacher(cfg, str(root / "teacher.pth"), 0), save_teacher(cfg, str(root / "other.pth"), 1),
                   str(root / "ake.pth"))
