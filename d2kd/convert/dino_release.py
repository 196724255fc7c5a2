"""The DINO checkpoints people have: the IDEA-Research release and detrex's model zoo, as d2kd DINO.

Two sources, recognised by their key names (read from their public code, not copied):

- ``idea``: IDEA-Research/DINO (``checkpoint0011_4scale.pth`` and the like; names as built by its
  code at commit faa8520): ``backbone.0.body.*`` (torchvision ResNet), ``input_proj.*``,
  ``transformer.{encoder,decoder}.layers.*`` with ``norm1/2/3`` and ``linear1/2``,
  ``transformer.tgt_embed``, ``transformer.enc_out_{class,bbox}_embed``, shared heads
  ``class_embed.<d>`` / ``bbox_embed.<d>``, ``label_enc`` (92 rows); 91 class rows indexed by COCO
  category id.
- ``detrex``: detrex's DINO (``dino_r50_4scale_12ep.pth``; names as built by its code at commit
  e244e6c): detectron2 ``backbone.res*``, ``neck.{convs,extra_convs}.*``,
  ``transformer.*.layers.<i>.{attentions,ffns,norms}.*``, one head per decoder layer plus the
  encoder's (``class_embed.<D>``), ``label_enc`` (80 rows, detectron2's contiguous COCO classes).

Layouts that differ from d2kd's and are converted: both order the sine embedding of a box as
(y, x, w, h) where d2kd uses (x, y, w, h), so the columns of the positional-query MLP's first
layer are permuted; the norms of a decoder layer are in another order; 91 COCO-id rows become
d2kd's 80 contiguous classes (detectron2's COCO metadata gives the ids).

The converted model must also *compute* like the release; the config values switch on what
d2kd's default DINO does differently: the next reference box from the un-normalised layer output
(``decoder.raw_refinement``), positional queries from the valid-ratio-scaled boxes
(``decoder.scaled_query_pos``), and each release's position embedding (IDEA: temperature 20,
no half-pixel offset; detrex: temperature 10000, offset -0.5). Checked on names and shapes
against the releases' parameter lists (``tests/convert/fixtures``), not numerically here.
Assumed, as in both releases' configs: 4 sampling points per head and level (a state dict
gives only heads x points), 100 denoising queries.
"""
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .errors import ConversionError
from .resnet import convert_resnet
from .source import TensorSource

MODEL_CONFIG = "dino"
NUM_POINTS = 4


def detect(state: Dict[str, torch.Tensor]) -> Optional[str]:
    """"idea", "detrex" or None."""
    if "transformer.tgt_embed.weight" in state and "backbone.0.body.conv1.weight" in state:
        return "idea"
    if "transformer.tgt_embed.weight" in state and "neck.convs.0.conv.weight" in state:
        return "detrex"
    return None


def coco_category_ids() -> List[int]:
    """COCO category ids of detectron2's 80 contiguous COCO classes, in their order."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [c["id"] for c in COCO_CATEGORIES if c["isthing"]]


def _count(state, pattern: str) -> int:
    found = {int(m.group(1)) for k in state for m in [re.match(pattern, k)] if m}
    return max(found) + 1 if found else 0


def _names(source: str) -> Dict[str, str]:
    if source == "idea":
        return {"enc": "transformer.encoder.layers", "dec": "transformer.decoder.layers", "level": "transformer.level_embed",
                "enc_ffn1": "linear1", "enc_ffn2": "linear2", "enc_msda": "self_attn", "dec_msda": "cross_attn",
                "backbone": "backbone.0.body.", "layout": "torchvision"}
    return {"enc": "transformer.encoder.layers", "dec": "transformer.decoder.layers", "level": "transformer.level_embeds",
            "enc_ffn1": "ffns.0.layers.0.0", "enc_ffn2": "ffns.0.layers.1", "enc_msda": "attentions.0",
            "dec_msda": "attentions.1", "backbone": "backbone.", "layout": "detectron2"}


def _backbone_levels(state, source: str) -> int:
    """How many encoder levels come from the backbone (1x1 projections; the rest are extra)."""
    if source == "idea":
        kernels = [state[f"input_proj.{i}.0.weight"].shape[-1] for i in range(_count(state, r"input_proj\.(\d+)\."))]
        return sum(1 for k in kernels if k == 1)
    return _count(state, r"neck\.convs\.(\d+)\.")


def backbone_depth(state, source: str) -> int:
    """ResNet depth (50/101/152) from the number of res4 blocks."""
    prefix = _names(source)["backbone"] + ("layer3." if source == "idea" else "res4.")
    blocks = _count(state, re.escape(prefix) + r"(\d+)\.")
    depth = {6: 50, 23: 101, 36: 152}.get(blocks)
    if depth is None:
        raise ConversionError(f"backbone with {blocks} res4 blocks: d2kd converts R-50/101/152 releases")
    return depth


def config_values(state: Dict[str, torch.Tensor], source: str) -> Dict[str, Any]:
    """d2kd DINO config values (keys relative to ``model``) read off a release's state dict."""
    n = _names(source)
    C = state[n["level"]].shape[1]
    levels = state[n["level"]].shape[0]
    enc_layers, dec_layers = _count(state, rf"{n['enc']}\.(\d+)\."), _count(state, rf"{n['dec']}\.(\d+)\.")
    heads = state[f"{n['enc']}.0.{n['enc_msda']}.attention_weights.weight"].shape[0] // (levels * NUM_POINTS)
    depth = backbone_depth(state, source)
    heads_key = "class_embed.0.weight"
    num_in = _backbone_levels(state, source)
    values = {
        "num_classes": int(state[heads_key].shape[0]),
        "num_queries": int(state["transformer.tgt_embed.weight"].shape[0]),
        "embed_dim": int(C),
        "num_feature_levels": int(levels),
        "backbone.bottom_up.stages.depth": depth,
        "backbone.bottom_up.stages.stride_in_1x1": False,
        "backbone.bottom_up.out_features": [f"res{i}" for i in range(6 - num_in, 6)],
        "encoder.num_layers": enc_layers,
        "decoder.num_layers": dec_layers,
        "encoder.num_heads": heads,
        "decoder.num_heads": heads,
        "encoder.ffn_dim": int(state[f"{n['enc']}.0.{n['enc_ffn1']}.weight"].shape[0]),
        "decoder.ffn_dim": int(state[f"{n['dec']}.0.{'linear1' if source == 'idea' else 'ffns.0.layers.0.0'}.weight"].shape[0]),
        "decoder.share_heads": source == "idea",
        "decoder.raw_refinement": True,
        "decoder.scaled_query_pos": True,
        "position_embedding.temperature": 20.0 if source == "idea" else 10000.0,
        "position_embedding.offset": 0.0 if source == "idea" else -0.5,
    }
    return values


def _permute_pos_head(weight: torch.Tensor) -> torch.Tensor:
    """First positional-query layer [C, 4 * C/2]: input columns (y, x, w, h) -> (x, y, w, h)."""
    y, x, w, h = weight.chunk(4, dim=1)
    return torch.cat([x, y, w, h], dim=1)


def take_backbone_and_layers(state: Dict[str, torch.Tensor], source: str, src: TensorSource,
                             out: Dict[str, torch.Tensor], values: Dict[str, Any]) -> None:
    """Fills ``out`` with the backbone, the input projections, the level embeddings and the
    encoder and decoder layers of an ``idea`` or ``detrex`` checkpoint (detrex's Deformable DETR
    names these as its DINO does: :mod:`.detrex_deformable_detr` uses this too)."""
    n = _names(source)
    resnet = {k[len(n["backbone"]):]: v for k, v in state.items() if k.startswith(n["backbone"])}
    if n["layout"] == "detectron2":
        renamed, left = {k: v for k, v in resnet.items() if not k.endswith("num_batches_tracked")}, []
    else:
        renamed, left = convert_resnet(resnet, n["layout"])
    if left:
        raise ConversionError(f"backbone weights d2kd cannot place: {left[:5]}")
    src.used.update(n["backbone"] + k for k in resnet)
    out.update({f"backbone.bottom_up.{k}": v for k, v in renamed.items()})

    num_in = _backbone_levels(state, source)
    for i in range(values["num_feature_levels"]):
        target = f"backbone.input_projs.{i}" if i < num_in else f"backbone.extra_projs.{i - num_in}"
        if source == "idea":
            src.take_module(out, f"{target}.0", f"input_proj.{i}.0")
            src.take_module(out, f"{target}.1", f"input_proj.{i}.1")
        else:
            neck = f"neck.convs.{i}" if i < num_in else f"neck.extra_convs.{i - num_in}"
            src.take_module(out, f"{target}.0", f"{neck}.conv")
            src.take_module(out, f"{target}.1", f"{neck}.norm")
    out["level_embed"] = src.take(n["level"])

    msda = ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
    for i in range(values["encoder.num_layers"]):
        hf, ours = f"{n['enc']}.{i}", f"encoder.layers.{i}"
        for m in msda:
            src.take_module(out, f"{ours}.self_attn.{m}", f"{hf}.{n['enc_msda']}.{m}")
        norms = ("norm1", "norm2") if source == "idea" else ("norms.0", "norms.1")
        src.take_module(out, f"{ours}.norm", f"{hf}.{norms[0]}")
        src.take_module(out, f"{ours}.ffn.linear1", f"{hf}.{n['enc_ffn1']}")
        src.take_module(out, f"{ours}.ffn.linear2", f"{hf}.{n['enc_ffn2']}")
        src.take_module(out, f"{ours}.ffn.norm", f"{hf}.{norms[1]}")
    for i in range(values["decoder.num_layers"]):
        hf, ours = f"{n['dec']}.{i}", f"decoder.layers.{i}"
        self_attn = f"{hf}.self_attn" if source == "idea" else f"{hf}.attentions.0.attn"
        for p in ("in_proj_weight", "in_proj_bias"):
            out[f"{ours}.self_attn.{p}"] = src.take(f"{self_attn}.{p}")
        src.take_module(out, f"{ours}.self_attn.out_proj", f"{self_attn}.out_proj")
        for m in msda:
            src.take_module(out, f"{ours}.cross_attn.{m}", f"{hf}.{n['dec_msda']}.{m}")
        # IDEA: norm2 after self-attention, norm1 after cross-attention, norm3 after the FFN
        norms = ("norm2", "norm1", "norm3") if source == "idea" else ("norms.0", "norms.1", "norms.2")
        ffn = ("linear1", "linear2") if source == "idea" else ("ffns.0.layers.0.0", "ffns.0.layers.1")
        src.take_module(out, f"{ours}.norm1", f"{hf}.{norms[0]}")
        src.take_module(out, f"{ours}.norm2", f"{hf}.{norms[1]}")
        src.take_module(out, f"{ours}.ffn.linear1", f"{hf}.{ffn[0]}")
        src.take_module(out, f"{ours}.ffn.linear2", f"{hf}.{ffn[1]}")
        src.take_module(out, f"{ours}.ffn.norm", f"{hf}.{norms[2]}")


def convert_state(state: Dict[str, torch.Tensor], source: str) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Maps a release's tensors to d2kd DINO names; returns ``(state, unused keys)``."""
    values = config_values(state, source)
    src = TensorSource(state)
    out: Dict[str, torch.Tensor] = {}
    take_backbone_and_layers(state, source, src, out, values)
    src.take_module(out, "decoder.norm", "transformer.decoder.norm")
    out["decoder.query_pos_head.layers.0.weight"] = _permute_pos_head(
        src.take("transformer.decoder.ref_point_head.layers.0.weight"))
    out["decoder.query_pos_head.layers.0.bias"] = src.take("transformer.decoder.ref_point_head.layers.0.bias")
    src.take_module(out, "decoder.query_pos_head.layers.1", "transformer.decoder.ref_point_head.layers.1")

    D = values["decoder.num_layers"]
    if source == "idea":  # shared heads: every class_embed.<d> is one tensor (checked)
        for kind in ("class_embed", "bbox_embed"):
            first = {k: v for k, v in state.items() if k.startswith(f"{kind}.0.")}
            for d in range(1, D):
                other = {k: state[k.replace(f"{kind}.0.", f"{kind}.{d}.", 1)] for k in first}
                if any(other[k] is not v and not torch.equal(other[k], v) for k, v in first.items()):
                    raise ConversionError(f"{kind}.{d} differs from {kind}.0: per-layer heads "
                                          "(dec_pred_*_embed_share=False) are not a DINO release d2kd knows")
        src.take_module(out, "decoder.class_heads.0", "class_embed.0")
        for j in range(3):
            src.take_module(out, f"decoder.box_heads.0.layers.{j}", f"bbox_embed.0.layers.{j}")
        enc_class, enc_box = "transformer.enc_out_class_embed", "transformer.enc_out_bbox_embed"
    else:
        for d in range(D):
            src.take_module(out, f"decoder.class_heads.{d}", f"class_embed.{d}")
            for j in range(3):
                src.take_module(out, f"decoder.box_heads.{d}.layers.{j}", f"bbox_embed.{d}.layers.{j}")
        enc_class, enc_box = f"class_embed.{D}", f"bbox_embed.{D}"
    src.take_module(out, "proposal_head.memory_proj", "transformer.enc_output")
    src.take_module(out, "proposal_head.memory_norm", "transformer.enc_output_norm")
    src.take_module(out, "proposal_head.class_head", enc_class)
    for j in range(3):
        src.take_module(out, f"proposal_head.box_head.layers.{j}", f"{enc_box}.layers.{j}")
    out["query_content.weight"] = src.take("transformer.tgt_embed.weight")
    # IDEA's label book has one row more than its classes (never a label), detrex's none
    out["denoising.label_embed.weight"] = src.take("label_enc.weight")[: values["num_classes"]]

    # the decoder's references to the same head modules, and the shared copies, are not left over
    unused = [k for k in src.left_over()
              if not re.match(r"(transformer\.decoder\.)?(class|bbox)_embed\.\d+\.", k)
              and not k.endswith("num_batches_tracked")]
    return out, unused


CLASS_HEADS = ("decoder.class_heads.", "proposal_head.class_head.", "denoising.label_embed.")


def keep_coco80(state: Dict[str, torch.Tensor], values: Dict[str, Any], rows: Sequence[int]) -> None:
    """Keeps the class rows ``rows`` (e.g. the 80 COCO ids of a 91-row IDEA head), in place."""
    index = torch.tensor(list(rows))
    for key in list(state):
        if key.startswith(CLASS_HEADS):
            state[key] = state[key].index_select(0, index)
    values["num_classes"] = len(rows)


def convert_release(state: Dict[str, torch.Tensor], num_classes: Optional[int] = None):
    """A DINO release state dict -> ``(d2kd state, config values, source)``.

    Args:
        num_classes: the class count wanted; 80 with a 91-row (COCO id) head keeps the 80 COCO
            classes in detectron2's order. None keeps the checkpoint's rows.
    """
    source = detect(state)
    if source is None:
        raise ConversionError("not a DINO release checkpoint (IDEA-Research or detrex key names)")
    values = config_values(state, source)
    out, unused = convert_state(state, source)
    if unused:
        raise ConversionError(f"{source} DINO weights d2kd's DINO has no place for: {unused[:5]}"
                              + (f" (+{len(unused) - 5} more)" if len(unused) > 5 else ""))
    have = values["num_classes"]
    if num_classes is not None and num_classes != have:
        if have == 91 and num_classes == 80:
            keep_coco80(out, values, coco_category_ids())
        else:
            raise ConversionError(f"the checkpoint predicts {have} classes, the config {num_classes}; only "
                                  "91 COCO-id rows -> 80 COCO classes is converted")
    return out, values, source
