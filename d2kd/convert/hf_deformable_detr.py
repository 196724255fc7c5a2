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
from .resnet import backbone_values, convert_resnet
from .source import TensorSource

MODEL_CONFIG = "deformable_detr"
ARCHITECTURE = "DeformableDetrForObjectDetection"

# names of transformers 4.x checkpoints -> the names of transformers 5 (its own conversion rules)
_LEGACY = [
    (re.compile(r"\.backbone\.conv_encoder\."), ".backbone."),
    (re.compile(r"self_attn\.out_proj\."), "self_attn.o_proj."),
    (re.compile(r"layers\.(\d+)\.fc([12])\."), r"layers.\1.mlp.fc\2."),
]

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
    src = TensorSource(_normalise(state))
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
