"""transformers' ``DabDetrForObjectDetection`` -> d2kd's :class:`~d2kd.detr.DABDETR`.

The d2kd model is ``configs/common/models/dab_detr.py`` with the values :func:`config_values`
reads from ``config.json``; checked numerically in ``tests/convert/test_hf_dab_detr.py``.
Not covered (an error names them): pattern embeddings (``num_patterns > 0``), pre-norm
(``normalize_before``), different height/width temperatures, a dilated or non-ResNet backbone.
"""
import math
from typing import Any, Dict, List, Tuple

import torch

from .errors import ConversionError
from .resnet import backbone_values, convert_resnet
from .source import TensorSource

MODEL_CONFIG = "dab_detr"
ARCHITECTURE = "DabDetrForObjectDetection"
CLASS_HEADS = ("decoder.class_head.",)
_BACKBONE = dict(last_only=True, timm_out_indices=[1, 2, 3, 4])


def config_values(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """d2kd config values (keys relative to ``model``) of a transformers DAB-DETR config."""
    unsupported = {
        "num_patterns": (cfg.get("num_patterns", 0), 0, "pattern embeddings"),
        "normalize_before": (cfg.get("normalize_before", False), False, "pre-norm layers"),
        "query_dim": (cfg.get("query_dim", 4), 4, "anchors that are not boxes"),
    }
    for key, (got, ok, what) in unsupported.items():
        if got != ok:
            raise ConversionError(f"{key}={got!r}: d2kd's DAB-DETR has no {what}")
    th, tw = cfg.get("temperature_height", 20), cfg.get("temperature_width", 20)
    if th != tw:
        raise ConversionError(f"temperature_height={th} != temperature_width={tw}: d2kd's sine embedding has one")
    scale = cfg.get("sine_position_embedding_scale")
    if scale is not None and abs(scale - 2 * math.pi) > 1e-6:
        raise ConversionError(f"sine_position_embedding_scale={scale}: d2kd's DAB-DETR uses 2*pi")
    activation = cfg.get("activation_function", "prelu")
    if activation not in ("relu", "gelu", "prelu"):
        raise ConversionError(f"activation_function={activation!r}: d2kd's layers have relu, gelu and prelu")
    values, _ = backbone_values(cfg, **_BACKBONE)
    values.update({
        "num_classes": len(cfg.get("id2label") or {}) or int(cfg.get("num_labels", 91)),
        "num_queries": int(cfg.get("num_queries", 300)),
        "embed_dim": int(cfg.get("hidden_size", 256)),
        "position_embedding.temperature": float(th),
        "decoder.keep_query_pos": bool(cfg.get("keep_query_pos", False)),
        "decoder.modulate_hw": True,
    })
    for part in ("encoder", "decoder"):
        values.update({
            f"{part}.num_layers": int(cfg.get(f"{part}_layers", 6)),
            f"{part}.num_heads": int(cfg.get(f"{part}_attention_heads", 8)),
            f"{part}.ffn_dim": int(cfg.get(f"{part}_ffn_dim", 2048)),
            f"{part}.activation": activation,
            f"{part}.dropout": float(cfg.get("dropout", 0.1)),
        })
    return values


def convert_state(state: Dict[str, torch.Tensor], cfg: Dict[str, Any]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Maps the checkpoint's tensors to d2kd's names. Returns ``(state, unused checkpoint keys)``."""
    values = config_values(cfg)
    state = {k.replace("model.backbone.model.", "model.backbone.conv_encoder.model."): v for k, v in state.items()}
    src = TensorSource(state)
    out: Dict[str, torch.Tensor] = {}

    _, layout = backbone_values(cfg, **_BACKBONE)
    prefix = "model.backbone.conv_encoder.model."
    resnet = {k[len(prefix):]: v for k, v in src.state.items() if k.startswith(prefix)}
    renamed, left = convert_resnet(resnet, layout)
    if not renamed:
        raise ConversionError(f"the checkpoint has no backbone weights under {prefix!r}")
    if left:
        raise ConversionError(f"backbone weights d2kd cannot place: {left[:5]}")
    src.used.update(prefix + k for k in resnet)
    out.update({f"backbone.bottom_up.{k}": v for k, v in renamed.items()})
    src.take_module(out, "backbone.input_projs.0.0", "model.input_projection")
    out["query_anchors"] = src.take("model.query_refpoint_embeddings.weight")

    def mlp(target, source, n):
        for j in range(n):
            src.take_module(out, f"{target}.layers.{j}", f"{source}.layers.{j}")

    def ffn(ours, hf):
        src.take_module(out, f"{ours}.ffn.linear1", f"{hf}.fc1")
        src.take_module(out, f"{ours}.ffn.linear2", f"{hf}.fc2")
        src.take_module(out, f"{ours}.ffn.norm", f"{hf}.final_layer_norm")
        if values["encoder.activation"] == "prelu":
            out[f"{ours}.ffn.activation.weight"] = src.take(f"{hf}.activation_fn.weight")

    mlp("encoder.query_scale", "model.encoder.query_scale", 2)
    for i in range(values["encoder.num_layers"]):
        hf, ours = f"model.encoder.layers.{i}", f"encoder.layers.{i}"
        for p in ("weight", "bias"):  # nn.MultiheadAttention packs q, k, v
            out[f"{ours}.self_attn.in_proj_{p}"] = torch.cat(
                [src.take(f"{hf}.self_attn.{n}_proj.{p}") for n in ("q", "k", "v")])
        src.take_module(out, f"{ours}.self_attn.out_proj", f"{hf}.self_attn.out_proj")
        src.take_module(out, f"{ours}.norm", f"{hf}.self_attn_layer_norm")
        ffn(ours, hf)

    sa = {"sa_q_content": "query_content_proj", "sa_q_pos": "query_pos_proj", "sa_k_content": "key_content_proj",
          "sa_k_pos": "key_pos_proj", "sa_value": "value_proj"}
    for i in range(values["decoder.num_layers"]):
        hf, ours = f"model.decoder.layers.{i}", f"decoder.layers.{i}"
        for a, b in sa.items():
            src.take_module(out, f"{ours}.{a}", f"{hf}.self_attn.self_attn_{b}")
            # the cross-attention's positional query projection exists in the first layer only
            if a != "sa_q_pos" or i == 0 or values["decoder.keep_query_pos"]:
                src.take_module(out, f"{ours}.ca{a[2:]}", f"{hf}.cross_attn.cross_attn_{b}")
        src.take_module(out, f"{ours}.sa_out", f"{hf}.self_attn.self_attn.output_proj")
        src.take_module(out, f"{ours}.norm1", f"{hf}.self_attn.self_attn_layer_norm")
        src.take_module(out, f"{ours}.ca_q_sine", f"{hf}.cross_attn.cross_attn_query_pos_sine_proj")
        src.take_module(out, f"{ours}.ca_out", f"{hf}.cross_attn.cross_attn.output_proj")
        src.take_module(out, f"{ours}.norm2", f"{hf}.cross_attn.cross_attn_layer_norm")
        ffn(ours, f"{hf}.mlp")
    mlp("decoder.ref_point_head", "model.decoder.ref_point_head", 2)
    mlp("decoder.query_scale", "model.decoder.query_scale", 2)
    mlp("decoder.ref_anchor_head", "model.decoder.ref_anchor_head", 2)
    src.take_module(out, "decoder.norm", "model.decoder.layernorm")
    src.take_module(out, "decoder.class_head", "class_embed")
    for j in range(3):  # the decoder's box head is tied to the output box predictor
        src.take_module(out, f"decoder.box_head.layers.{j}", f"bbox_predictor.layers.{j}",
                        f"model.decoder.bbox_embed.layers.{j}")
    unused = [k for k in src.left_over() if not k.startswith("model.decoder.bbox_embed.")
              and not k.endswith("num_batches_tracked")]
    return out, unused
