"""Small helpers the LazyConfigs under configs/ call: ResNet stages of any depth, local paths
of pretrained weights, per-parameter learning-rate multipliers.

They exist so that a config change stays one line: ``model.backbone.bottom_up.stages.depth=18``
gives a working R-18 (BasicBlock stages, 512-channel res5 feeding RetinaNet's P6) with nothing
else to edit.
"""
import os
from typing import Mapping

from detectron2.modeling.backbone import ResNet

# Arguments only BottleneckBlock takes; BasicBlock (R-18/34) rejects them.
_BOTTLENECK_ONLY = ("stride_in_1x1", "num_groups", "dilation", "bottleneck_channels")


def resnet_stages(depth: int = 50, norm: str = "FrozenBN", **kwargs):
    """``ResNet.make_default_stages`` for any depth in {18, 34, 50, 101, 152}.

    Bottleneck-only arguments (``stride_in_1x1``, ``num_groups``, ``dilation``) are dropped for
    R-18/34, so a config written for R-50 runs at any depth by changing ``depth`` alone.
    """
    if depth < 50:
        kwargs = {k: v for k, v in kwargs.items() if k not in _BOTTLENECK_ONLY}
    return ResNet.make_default_stages(depth=depth, norm=norm, **kwargs)


def resnet_out_channels(depth: int = 50, stage: str = "res5") -> int:
    """Channels of ``stage`` (res2..res5) of a default ResNet of ``depth``."""
    index = ["res2", "res3", "res4", "res5"].index(stage)
    return (64 if depth < 50 else 256) * 2 ** index


def weights_dir() -> str:
    """Folder of pretrained weights: ``$D2KD_WEIGHTS``, else ``./weights`` (absolute)."""
    return os.path.abspath(os.environ.get("D2KD_WEIGHTS") or "weights")


def pretrained_weights(relative_path: str) -> str:
    """Local path of a pretrained file, e.g. ``ImageNetPretrained/MSRA/R-50.pkl`` (the layout of
    detectron2's model zoo under ``$D2KD_WEIGHTS``). Evaluated when the config is loaded; nothing
    is downloaded: a missing file is reported at start-up with the URL to fetch it from."""
    return os.path.join(weights_dir(), relative_path)


class LRMultiplierByName:
    """``lr_factor_func`` of detectron2's ``get_default_optimizer_params``: a learning-rate factor
    for parameters whose dotted name contains one of the given module names.

    ``LRMultiplierByName({"backbone": 0.1})`` gives 0.1 to ``backbone.*`` and also to
    ``student.backbone.*`` (distillation) and ``module.backbone.*`` (DDP); others get 1.0.
    The first matching key wins.
    """

    def __init__(self, multipliers: Mapping[str, float]):
        self.multipliers = {str(k): float(v) for k, v in dict(multipliers).items()}

    def __call__(self, name: str) -> float:
        padded = "." + name
        for key, factor in self.multipliers.items():
            if ("." + key + ".") in padded:
                return factor
        return 1.0

    def __repr__(self):
        return f"LRMultiplierByName({self.multipliers})"
