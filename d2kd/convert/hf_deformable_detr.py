"""transformers' ``DeformableDetrForObjectDetection`` -> d2kd's :class:`~d2kd.detr.DeformableDETR`.

The d2kd model is ``configs/common/models/deformable_detr.py`` with ``query_type="paper"`` (the
queries of the paper's code, which transformers follows) and the values :func:`config_values`
reads from ``config.json``. Plain, iterative box refinement and two-stage are covered; what
d2kd lacks (learned position embeddings, a dilated backbone, a non-ResNet backbone) is an error
that names it. Layer by layer the modules are the same (checked numerically in
``tests/convert/test_hf_deformable_detr.py``); the one behaviour that differs is on padded
pixels of two-stage models: transformers may rank a padded or border token as a proposal
(its box logits are +inf), d2kd never does.
"""
import re
from typing import Any, Dict, List, Tuple

import torch

from .errors import ConversionError
from .resnet import convert_resnet

MODEL_CONFIG = "deformable_detr"
ARCHITECTURE = "DeformableDetrForObjectDetection"

# names of transformers 4.x checkpoints -> the names of transformers 5 (its own conversion rules)
_LEGACY = [
    (re.compile(r"\.backbone\.conv_encoder\."), ".backbone."),
    (re.compile(r"self_attn\.out_proj\."), "self_attn.o_proj."),
    (re.compile(r"layers\.(\d+)\.fc([12])\."), r"layers.\1.mlp.fc\2."),
]

_RESNET_DEPTHS = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}
_TIMM_RESNETS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152}


def _resnet_depth(depths, layer_type) -> int:
    depths = tuple(depths)
    if layer_type == "bottleneck" and depths == (3, 4, 6, 3):
        return 50
    depth = _RESNET_DEPTHS.get(depths)
    if depth is None or (depth < 50) != (layer_type == "basic"):
        raise ConversionError(f"backbone ResNet with {layer_type} blocks and stage depths {list(depths)} is not "
                              "one of R-18/34/50/101/152, the ResNets d2kd builds")
    return depth


def backbone_values(cfg: Dict[str, Any]) -> Tuple[Dict[str, Any], str]:
    """The detectron2 ResNet of ``config.json``: (config values, key layout of its weights)."""
    if cfg.get("dilation"):
        raise ConversionError("dilation=True (a DC5 backbone): d2kd's DETR backbones have no dilated res5")
    bb = cfg.get("backbone_config")
    levels = cfg.get("num_feature_levels", 4)
    if bb is None and cfg.get("use_timm_backbone", True):  # transformers 4.x timm layout
        bb = {"model_type": "timm_backbone", "backbone": cfg.get("backbone", "resnet50"),
              "out_indices": [2, 3, 4] if levels > 1 else [4]}
    if bb is None:
        raise ConversionError("config.json names no backbone (no backbone_config, use_timm_backbone=false)")
    kind = bb.get("model_type")
    if kind == "timm_backbone":
        name = bb.get("backbone") or cfg.get("backbone")
        if name not in _TIMM_RESNETS:
            raise ConversionError(f"timm backbone {name!r}: d2kd converts only {sorted(_TIMM_RESNETS)}")
        depth, stride_in_1x1, layout = _TIMM_RESNETS[name], False, "torchvision"
        stages = [int(i) for i in bb.get("out_indices", [2, 3, 4] if levels > 1 else [4])]
    elif kind == "resnet":
        layer_type = bb.get("layer_type", "bottleneck")
        depth = _resnet_depth(bb.get("depths", [3, 4, 6, 3]), layer_type)
        widths = [64, 128, 256, 512] if depth < 50 else [256, 512, 1024, 2048]
        if list(bb.get("hidden_sizes", widths)) != widths or bb.get("embedding_size", 64) != 64:
            raise ConversionError(f"backbone widths {bb.get('hidden_sizes')} (stem {bb.get('embedding_size')}) "
                                  f"differ from a standard R-{depth} ({widths}, stem 64)")
        if bb.get("downsample_in_first_stage", False):
            raise ConversionError("backbone downsample_in_first_stage=True has no detectron2 ResNet equivalent")
        stride_in_1x1, layout = bool(bb.get("downsample_in_bottleneck", False)), "transformers"
        names = bb.get("out_features") or [f"stage{i}" for i in bb.get("out_indices", [2, 3, 4])]
        stages = [int(str(n).replace("stage", "")) for n in names]
    else:
        raise ConversionError(f"backbone model_type {kind!r}: d2kd converts ResNet backbones only")
    if sorted(stages) != stages or not set(stages) <= {1, 2, 3, 4}:
        raise ConversionError(f"backbone outputs stages {stages}: expected consecutive ResNet stages 1-4")
    values = {
        "backbone.bottom_up.stages.depth": depth,
        "backbone.bottom_up.stages.norm": "FrozenBN",
        "backbone.bottom_up.out_features": [f"res{s + 1}" for s in stages],
    }
    if depth >= 50:
        values["backbone.bottom_up.stages.stride_in_1x1"] = stride_in_1x1
    return values, layout


def config_values(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """d2kd config values (keys relative to ``model``) of a transformers Deformable DETR config."""
    if cfg.get("position_embedding_type", "sine") != "sine":
        raise ConversionError(f"position_embedding_type={cfg['position_embedding_type']!r}: d2kd has only sine "
                              "position embeddings")
    activation = cfg.get("activation_function", "relu")
    if activation not in ("relu", "gelu"):
        raise ConversionError(f"activation_function={activation!r}: d2kd's layers have relu and gelu")
    two_stage = bool(cfg.get("two_stage", False))
    refine = bool(cfg.get("with_box_refine", False))
    if two_stage and not refine:
        raise ConversionError("two_stage=True without with_box_refine: transformers itself rejects this config")
    values, _ = backbone_values(cfg)
    values.update({
        "num_classes": len(cfg.get("id2label") or {}) or int(cfg.get("num_labels", 91)),
        "num_queries": int(cfg.get("two_stage_num_proposals", 300) if two_stage else cfg.get("num_queries", 300)),
        "embed_dim": int(cfg.get("d_model", 256)),
        "num_feature_levels": int(cfg.get("num_feature_levels", 4)),
        "two_stage": two_stage,
        "query_type": "paper",
        "decoder.box_refine": refine,
        "decoder.share_heads": not refine,
        "decoder.point_anchors": not two_stage,
        "decoder.anchor_pos": False,
        "decoder.dynamic_query_pos": False,
        "decoder.look_forward_twice": False,
        "decoder.final_norm": False,
    })
    for part, prefix in (("encoder", "encoder"), ("decoder", "decoder")):
        values.update({
            f"{part}.num_layers": int(cfg.get(f"{prefix}_layers", 6)),
            f"{part}.num_heads": int(cfg.get(f"{prefix}_attention_heads", 8)),
            f"{part}.num_points": int(cfg.get(f"{prefix}_n_points", 4)),
            f"{part}.ffn_dim": int(cfg.get(f"{prefix}_ffn_dim", 1024)),
            f"{part}.activation": activation,
            f"{part}.dropout": float(cfg.get("dropout", 0.1)),
        })
    return values


class _Source:
    """The checkpoint's tensors, taken one by one, so that what is left over can be reported."""

    def __init__(self, state: Dict[str, torch.Tensor]):
        self.state = dict(state)
        self.used = set()

    def take(self, *candidates: str) -> torch.Tensor:
        """The first of ``candidates`` present (tied heads may be stored under one name only)."""
        for name in candidates:
            if name in self.state:
                self.used.add(name)
                return self.state[name]
        raise ConversionError(f"the checkpoint has none of {list(candidates)}")

    def take_module(self, out: Dict[str, torch.Tensor], target: str, *candidates: str, params=("weight", "bias")):
        for p in params:
            out[f"{target}.{p}"] = self.take(*(f"{c}.{p}" for c in candidates))

    def left_over(self) -> List[str]:
        return sorted(set(self.state) - self.used)


def _normalise(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, repl in _LEGACY:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def convert_state(state: Dict[str, torch.Tensor], cfg: Dict[str, Any]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Maps the checkpoint's tensors to d2kd's names. Returns ``(state, unused checkpoint keys)``."""
    values = config_values(cfg)
    src = _Source(_normalise(state))
    out: Dict[str, torch.Tensor] = {}

    # backbone
    _, layout = backbone_values(cfg)
    prefix = "model.backbone.model."
    resnet = {k[len(prefix):]: v for k, v in src.state.items() if k.startswith(prefix)}
    renamed, left = convert_resnet(resnet, layout)
    if not renamed:
        raise ConversionError(f"the checkpoint has no backbone weights under {prefix!r}")
    if left:
        raise ConversionError(f"backbone weights d2kd cannot place: {left[:5]}")
    src.used.update(prefix + k for k in resnet)
    out.update({f"backbone.bottom_up.{k}": v for k, v in renamed.items()})

    # channel mapper: input projections, then the extra stride-2 levels
    num_in = len(values["backbone.bottom_up.out_features"])
    for i in range(values["num_feature_levels"]):
        target = f"backbone.input_projs.{i}" if i < num_in else f"backbone.extra_projs.{i - num_in}"
        for j in (0, 1):
            src.take_module(out, f"{target}.{j}", f"model.input_proj.{i}.{j}")
    out["level_embed"] = src.take("model.level_embed")

    ffn = {"mlp.fc1": "ffn.linear1", "mlp.fc2": "ffn.linear2", "final_layer_norm": "ffn.norm"}
    msda = ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
    for i in range(values["encoder.num_layers"]):
        hf, ours = f"model.encoder.layers.{i}", f"encoder.layers.{i}"
        for m in msda:
            src.take_module(out, f"{ours}.self_attn.{m}", f"{hf}.self_attn.{m}")
        src.take_module(out, f"{ours}.norm", f"{hf}.self_attn_layer_norm")
        for a, b in ffn.items():
            src.take_module(out, f"{ours}.{b}", f"{hf}.{a}")
    for i in range(values["decoder.num_layers"]):
        hf, ours = f"model.decoder.layers.{i}", f"decoder.layers.{i}"
        for p in ("weight", "bias"):  # nn.MultiheadAttention packs q, k, v
            out[f"{ours}.self_attn.in_proj_{p}"] = torch.cat(
                [src.take(f"{hf}.self_attn.{n}_proj.{p}") for n in ("q", "k", "v")])
        src.take_module(out, f"{ours}.self_attn.out_proj", f"{hf}.self_attn.o_proj")
        src.take_module(out, f"{ours}.norm1", f"{hf}.self_attn_layer_norm")
        for m in msda:
            src.take_module(out, f"{ours}.cross_attn.{m}", f"{hf}.encoder_attn.{m}")
        src.take_module(out, f"{ours}.norm2", f"{hf}.encoder_attn_layer_norm")
        for a, b in ffn.items():
            src.take_module(out, f"{ours}.{b}", f"{hf}.{a}")

    # prediction heads: one per layer (refinement) or one shared; transformers ties copies, so a
    # head may be stored under the top-level name, the decoder's name, or only as head 0
    def head(kind, d):
        return (f"{kind}.{d}", f"model.decoder.{kind}.{d}", f"{kind}.0")

    num_heads = 1 if values["decoder.share_heads"] else values["decoder.num_layers"]
    for d in range(num_heads):
        src.take_module(out, f"decoder.class_heads.{d}", *head("class_embed", d))
        for j in range(3):
            src.take_module(out, f"decoder.box_heads.{d}.layers.{j}", *(f"{h}.layers.{j}" for h in head("bbox_embed", d)))
    if values["two_stage"]:
        D = values["decoder.num_layers"]
        src.take_module(out, "proposal_head.memory_proj", "model.enc_output")
        src.take_module(out, "proposal_head.memory_norm", "model.enc_output_norm")
        src.take_module(out, "proposal_head.class_head", f"class_embed.{D}", f"model.decoder.class_embed.{D}")
        for j in range(3):
            src.take_module(out, f"proposal_head.box_head.layers.{j}", f"bbox_embed.{D}.layers.{j}",
                            f"model.decoder.bbox_embed.{D}.layers.{j}")
        src.take_module(out, "query_proj.0", "model.pos_trans")
        src.take_module(out, "query_proj.1", "model.pos_trans_norm")
    else:
        out["query_embedding.weight"] = src.take("model.query_position_embeddings.weight")
        src.take_module(out, "reference_points", "model.reference_points")
    # copies of heads that were read under another name are not left over
    unused = [k for k in src.left_over() if not re.match(r"(model\.decoder\.)?(class|bbox)_embed\.\d+\.", k)
              and not k.endswith("num_batches_tracked")]
    return out, unused


CLASS_HEADS = ("decoder.class_heads.", "proposal_head.class_head.")
