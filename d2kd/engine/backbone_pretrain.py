"""Built-in pretrained backbones: the built-in data's analogue of ImageNet weights.

COCO detectors start from ImageNet-pretrained ResNets, and DETR recipes (lr 1e-4, backbone at
0.1x, FrozenBN) assume one; trained from scratch on a CPU budget, DETRs do not learn. This module
pretrains detectron2 ResNets (BatchNorm) on object-crop classification (:mod:`d2kd.data.crops`)
and writes them where the built-in configs' ``train.init_checkpoint`` points:

    $D2KD_WEIGHTS/BuiltinPretrained/R-{depth}.pth     the weights (detectron2 model-zoo layout)
    $D2KD_WEIGHTS/BuiltinPretrained/R-{depth}.json    sha256 of the .pth and how it was made

The ``.pth`` holds ``{"model": {"stem.conv1.weight": ..., "res2.0.conv1.weight": ...},
"matching_heuristics": True}``, so detectron2's checkpointer maps it onto ``backbone.bottom_up.*``
(or ``student.backbone.bottom_up.*``) by suffix matching, as it does the MSRA/torchvision files.
Both files are written atomically, the manifest last: a run killed mid-write leaves no pair that
verifies. :func:`verify_weights` (called before every training that starts from such a file)
rejects a corrupt file, and a file made by another version of this tool, from another data spec
or for another architecture, each with an error that names the file and says what to run.
"""
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.modeling.backbone import BasicStem

from ..data.crops import BACKGROUND, CropSpec, make_crops
from ..data.shapes import GENERATOR_VERSION, ShapesSpec
from ..layers import ScratchResNet
from .checkpoint import CheckpointError, _atomic_write, sha256_file
from .model_zoo import pretrained_weights, resnet_stages

__all__ = [
    "PRETRAIN_VERSION",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "PretrainRecipe",
    "PretrainedWeightsError",
    "CropClassifier",
    "builtin_backbone_path",
    "default_recipe",
    "pretrain_backbone",
    "ensure_backbone",
    "verify_weights",
    "is_builtin_backbone",
]

logger = logging.getLogger(__name__)

# Bump when the weights this tool writes for a given recipe change (training, data, layout).
PRETRAIN_VERSION = 1
SUBDIR = "BuiltinPretrained"
# detectron2's MSRA statistics in BGR order: what the built-in detector configs normalise with.
PIXEL_MEAN = (103.530, 116.280, 123.675)
PIXEL_STD = (57.375, 57.120, 58.395)


class PretrainedWeightsError(CheckpointError):
    """A built-in pretrained weights file is missing, corrupt, or was made for something else."""


@dataclass(frozen=True)
class PretrainRecipe:
    """How one backbone is pretrained (all of it enters the manifest).

    ``stride_in_1x1=False`` puts the stride of R-50/101 bottlenecks in the 3x3 conv (torchvision
    style); the built-in configs build their ResNets the same way. ``val_images``: held-out images
    of the pretrain split (after the training ones) on which the accuracy is measured.
    ``zero_init_residual``: every residual branch starts at zero (:class:`~d2kd.layers.ScratchResNet`);
    without it R-50 stayed at chance (loss 2.3 = log 13 after 200 steps) where R-18 was at 1.2.
    """

    depth: int = 18
    steps: int = 900
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    seed: int = 0
    stride_in_1x1: bool = False
    zero_init_residual: bool = True
    crops: CropSpec = field(default_factory=CropSpec)
    val_images: int = 200

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)


def default_recipe(depth: int) -> PretrainRecipe:
    """The recipe ``python -m d2kd.tools.pretrain_backbone --depth N`` uses: R-18/34 900 steps
    (0.35 s/step on 2 cores, 6 minutes; 86% held-out crop accuracy), R-50/101 600 steps with
    zero-initialised residual branches (1.15 s/step, 12 minutes; 68%). R-18 learns without the
    zero init; R-50 does not (loss still at chance after 200 steps)."""
    deep = depth >= 50
    return PretrainRecipe(depth=depth, steps=600 if deep else 900, zero_init_residual=deep)


class CropClassifier(nn.Module):
    """A detectron2 ResNet (BatchNorm, ``res5`` output), global average pooling and a linear layer.

    ``forward``: [N, 3, H, W] normalised BGR -> [N, num_classes] logits. ``self.resnet`` has the
    parameter names of ``backbone.bottom_up`` in the detector configs.
    """

    def __init__(self, depth: int, num_classes: int, stride_in_1x1: bool = False,
                 zero_init_residual: bool = True):
        super().__init__()
        stages = resnet_stages(depth=depth, norm="BN", stride_in_1x1=stride_in_1x1)
        self.resnet = ScratchResNet(BasicStem(3, 64, norm="BN"), stages, out_features=["res5"],
                                    zero_init_residual=zero_init_residual)
        channels = self.resnet.output_shape()["res5"].channels
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.resnet(x)["res5"]
        return self.fc(feat.mean(dim=(2, 3)))


def builtin_backbone_path(depth: int) -> str:
    """``$D2KD_WEIGHTS/BuiltinPretrained/R-{depth}.pth`` (evaluated when a config is loaded)."""
    return pretrained_weights(f"{SUBDIR}/R-{depth}.pth")


def is_builtin_backbone(path: str) -> bool:
    """Whether ``path`` names a built-in pretrained backbone (by its folder)."""
    return os.path.basename(os.path.dirname(os.path.abspath(path))) == SUBDIR


def _manifest_path(path: str) -> str:
    return os.path.splitext(path)[0] + ".json"


def _identity(recipe: PretrainRecipe, shapes: ShapesSpec) -> Dict:
    """What a weights file must have been made with to be reused / accepted."""
    return {"tool_version": PRETRAIN_VERSION, "generator_version": GENERATOR_VERSION,
            "shapes_spec": shapes.to_dict(), "recipe": recipe.to_dict()}


def _tensor_batch(images: np.ndarray, index: torch.Tensor, flip: Optional[torch.Tensor]) -> torch.Tensor:
    """uint8 [N, S, S, 3] BGR crops at ``index`` -> normalised float [B, 3, S, S]."""
    x = torch.from_numpy(images[index.numpy()]).permute(0, 3, 1, 2).float()
    if flip is not None:
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def _accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch: int = 256) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch):
        idx = torch.arange(start, min(start + batch, len(labels)))
        pred = model(_tensor_batch(images, idx, None)).argmax(1)
        correct += int((pred == torch.from_numpy(labels[idx.numpy()])).sum())
    model.train()
    return correct / max(1, len(labels))


def pretrain_backbone(recipe: PretrainRecipe, shapes: ShapesSpec,
                      log: Callable[[str], None] = logger.info) -> Dict:
    """Trains a :class:`CropClassifier` with ``recipe``; deterministic for a recipe (its seed) and
    a thread count.

    Returns ``{"state_dict": the ResNet's weights (d2 names, no head), "val_accuracy": float,
    "train_seconds": float, "num_crops": int}``.
    """
    start = time.time()
    images, labels = make_crops(shapes, recipe.crops)
    val_images, val_labels = _held_out_crops(shapes, recipe.crops, recipe.val_images)
    log(f"pretrain R-{recipe.depth}: {len(labels)} training crops, {len(val_labels)} held-out "
        f"({np.bincount(labels, minlength=BACKGROUND + 1).tolist()} per class, last: background); "
        f"made in {time.time() - start:.0f} s")

    gen = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    model = CropClassifier(recipe.depth, BACKGROUND + 1, recipe.stride_in_1x1, recipe.zero_init_residual)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)

    def lr_at(step: int) -> float:
        if step < recipe.warmup_steps:
            return recipe.lr * (step + 1) / recipe.warmup_steps
        t = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
        return recipe.lr * 0.5 * (1 + math.cos(math.pi * t))

    order = torch.randperm(len(labels), generator=gen)
    cursor = 0
    model.train()
    train_start = time.time()
    for step in range(recipe.steps):
        if cursor + recipe.batch_size > len(order):
            order, cursor = torch.randperm(len(labels), generator=gen), 0
        idx = order[cursor:cursor + recipe.batch_size]
        cursor += recipe.batch_size
        flip = torch.rand(len(idx), generator=gen) < 0.5
        x = _tensor_batch(images, idx, flip)
        y = torch.from_numpy(labels[idx.numpy()])
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0 or step + 1 == recipe.steps:
            rate = (time.time() - train_start) / (step + 1)
            log(f"pretrain R-{recipe.depth}: step {step + 1}/{recipe.steps}  loss {loss.item():.3f}  "
                f"{rate:.2f} s/step  ETA {rate * (recipe.steps - step - 1) / 60:.1f} min")
    acc = _accuracy(model, val_images, val_labels)
    log(f"pretrain R-{recipe.depth}: held-out crop accuracy {100 * acc:.1f}% "
        f"({time.time() - start:.0f} s in all)")
    state = {k: v.detach().clone() for k, v in model.resnet.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    return {"state_dict": state, "val_accuracy": acc, "train_seconds": time.time() - start,
            "num_crops": int(len(labels))}


def _held_out_crops(shapes: ShapesSpec, crops: CropSpec, num: int):
    """Crops of the ``num`` pretrain-split images after the training ones."""
    from ..data.crops import crops_of_image

    parts = [crops_of_image(shapes, crops, crops.num_images + i) for i in range(num)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def write_weights(path: str, result: Dict, recipe: PretrainRecipe, shapes: ShapesSpec) -> None:
    """Writes ``path`` (the weights) then its manifest, each atomically."""
    payload = {"model": result["state_dict"], "__author__": f"d2kd.pretrain_backbone v{PRETRAIN_VERSION}",
               "matching_heuristics": True}
    _atomic_write(path, lambda f: torch.save(payload, f))
    manifest = dict(_identity(recipe, shapes), sha256=sha256_file(path),
                    val_accuracy=result["val_accuracy"], train_seconds=result["train_seconds"],
                    num_crops=result["num_crops"], torch_threads=torch.get_num_threads())
    _atomic_write(_manifest_path(path), lambda f: f.write(json.dumps(manifest, indent=1).encode()))


def _fix_hint(path: str, depth: Optional[int]) -> str:
    depth_arg = f" --depth {depth}" if depth else ""
    return (f"run `python -m d2kd.tools.pretrain_backbone{depth_arg} --force` to (re)make it "
            f"under $D2KD_WEIGHTS={os.path.dirname(os.path.dirname(os.path.abspath(path)))}")


def _depth_of(path: str) -> Optional[int]:
    name = os.path.splitext(os.path.basename(path))[0]
    return int(name[2:]) if name.startswith("R-") and name[2:].isdigit() else None


def verify_weights(path: str, recipe: Optional[PretrainRecipe] = None,
                   shapes: Optional[ShapesSpec] = None) -> Dict:
    """Checks a built-in pretrained weights file; returns its manifest or raises
    :class:`PretrainedWeightsError` naming the file and the problem.

    Always checked: the file and its manifest exist, the sha256 matches, the tool and generator
    versions are the current ones, and the depth is the one in the file name. With ``recipe`` /
    ``shapes`` the manifest must also have been made with exactly those.
    """
    depth = _depth_of(path)
    if not os.path.isfile(path):
        raise PretrainedWeightsError(f"built-in pretrained backbone not found: {path!r}; {_fix_hint(path, depth)}")
    manifest_file = _manifest_path(path)
    try:
        with open(manifest_file) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise PretrainedWeightsError(
            f"built-in pretrained backbone {path!r} has no readable manifest {manifest_file!r} ({e}): "
            f"it was not written completely; {_fix_hint(path, depth)}") from e
    if manifest.get("sha256") != sha256_file(path):
        raise PretrainedWeightsError(
            f"built-in pretrained backbone {path!r} is corrupt (its sha256 differs from the one in "
            f"{manifest_file!r}); {_fix_hint(path, depth)}")
    for key, want in (("tool_version", PRETRAIN_VERSION), ("generator_version", GENERATOR_VERSION)):
        if manifest.get(key) != want:
            raise PretrainedWeightsError(
                f"built-in pretrained backbone {path!r} was made by {key.replace('_', ' ')} "
                f"{manifest.get(key)}, this d2kd has {want}; {_fix_hint(path, depth)}")
    made_depth = manifest.get("recipe", {}).get("depth")
    if depth is not None and made_depth != depth:
        raise PretrainedWeightsError(
            f"built-in pretrained backbone {path!r} holds a ResNet-{made_depth}, not ResNet-{depth}; "
            f"{_fix_hint(path, depth)}")
    if shapes is not None and manifest.get("shapes_spec") != shapes.to_dict():
        raise PretrainedWeightsError(
            f"built-in pretrained backbone {path!r} was made from another data spec "
            f"({manifest.get('shapes_spec')}, expected {shapes.to_dict()}); {_fix_hint(path, depth)}")
    if recipe is not None and manifest.get("recipe") != json.loads(json.dumps(recipe.to_dict())):
        raise PretrainedWeightsError(
            f"built-in pretrained backbone {path!r} was made with another recipe "
            f"({manifest.get('recipe')}, expected {recipe.to_dict()}); {_fix_hint(path, depth)}")
    return manifest


def ensure_backbone(recipe: PretrainRecipe, shapes: ShapesSpec, path: Optional[str] = None,
                    force: bool = False, log: Callable[[str], None] = logger.info) -> str:
    """The weights of ``recipe`` at ``path`` (default :func:`builtin_backbone_path`): reused when
    a verified file made with the same recipe and spec is there, else trained and written."""
    path = path or builtin_backbone_path(recipe.depth)
    if not force:
        try:
            manifest = verify_weights(path, recipe, shapes)
            log(f"reusing {path} (held-out crop accuracy {100 * manifest['val_accuracy']:.1f}%)")
            return path
        except PretrainedWeightsError as e:
            if os.path.exists(path):
                log(f"not reusing {path}: {e}")
    result = pretrain_backbone(recipe, shapes, log=log)
    write_weights(path, result, recipe, shapes)
    log(f"wrote {path}")
    return path
