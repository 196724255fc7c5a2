"""detrex's Deformable DETR model zoo (``projects/deformable_detr``) as d2kd's :class:`~d2kd.detr.DeformableDETR`.

Names as built by detrex's code at commit e244e6c (read from it, not copied): detectron2
``backbone.res*``, ``neck.{convs,extra_convs}.*``, ``transformer.level_embeds``,
``transformer.*.layers.<i>.{attentions,ffns,norms}.*`` (the same as detrex's DINO: the layers are
converted by :func:`.dino_release.take_backbone_and_layers`), and the variant's queries and heads:

- plain (``deformable_detr_r50_50ep``): ``query_embedding`` [N, 2C] (positional half first),
  ``transformer.reference_points``; one head shared by all layers, stored once per layer
  (``class_embed.<d>`` are one tensor);
- box refinement: one head per decoder layer, the decoder's reference to them
  (``transformer.decoder.bbox_embed.*``) stored too;
- two-stage (always with box refinement; detrex cannot run it without): ``transformer.pos_trans``
  [2C, 2C] and ``pos_trans_norm``, ``transformer.enc_output`` / ``enc_output_norm``, and a head
  ``class_embed.<D>`` / ``bbox_embed.<D>`` after the D decoder heads for the proposals.

The d2kd model is ``configs/common/models/deformable_detr.py`` with ``query_type="paper"``, the
queries of the paper's code, which detrex follows (as transformers does: that mapping is checked
numerically in ``tests/convert/test_hf_deformable_detr.py``); no layout is permuted (the
proposals' sine embedding is (x, y, w, h) in both). detrex trains on detectron2's 80 contiguous
COCO classes, so the class rows are kept as they are. Checked on names and shapes against the
plain model's full parameter list (``tests/convert/fixtures``), not numerically.

Assumed (a state dict cannot tell): 4 sampling points per head and level (detrex's default;
the weights give heads x points), and for two-stage 300 queries (``two_stage_num_proposals``,
detrex's ``num_queries``; the weights do not depend on it). Left as it is: detrex evaluates
without a padding mask (padded pixels are image), d2kd masks padding; on an unpadded image
this does not matter.
"""
import re
from typing import Any, Dict, List, Optional, Tuple

import torch

from .dino_release import NUM_POINTS, _backbone_levels, _count, _names, backbone_depth, take_backbone_and_layers
from .errors import ConversionError
from .source import TensorSource

MODEL_CONFIG = "deformable_detr"
SOURCE = "detrex"
TWO_STAGE_QUERIES = 300


def detect(state: Dict[str, torch.Tensor]) -> Optional[str]:
    """"detrex" for a detrex Deformable DETR state dict, else None (detrex's DINO has ``tgt_embed``)."""
    if ("neck.convs.0.conv.weight" in state and "transformer.level_embeds" in state
            and "transformer.tgt_embed.weight" not in state):
        return SOURCE
    return None


def config_values(state: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    """d2kd DeformableDETR config values (keys relative to ``model``) read off the state dict."""
    n = _names(SOURCE)
    C = state[n["level"]].shape[1]
    levels = state[n["level"]].shape[0]
    two_stage = "transformer.pos_trans.weight" in state
    refine = "transformer.decoder.bbox_embed.0.layers.0.weight" in state
    if two_stage and not refine:
        raise ConversionError("two-stage detrex Deformable DETR without box refinement (no "
                              "transformer.decoder.bbox_embed): detrex itself cannot run this model")
    if not two_stage and "query_embedding.weight" not in state:
        raise ConversionError("detrex Deformable DETR with neither query_embedding (one-stage) nor "
                              "transformer.pos_trans (two-stage): not a checkpoint d2kd knows")
    heads = state[f"{n['enc']}.0.{n['enc_msda']}.attention_weights.weight"].shape[0] // (levels * NUM_POINTS)
    values = {
        "num_classes": int(state["class_embed.0.weight"].shape[0]),
        "num_queries": TWO_STAGE_QUERIES if two_stage else int(state["query_embedding.weight"].shape[0]),
        "embed_dim": int(C),
        "num_feature_levels": int(levels),
        "two_stage": two_stage,
        "query_type": "paper",
        "backbone.bottom_up.stages.depth": backbone_depth(state, SOURCE),
        "backbone.bottom_up.stages.stride_in_1x1": False,
        "backbone.bottom_up.out_features": [f"res{i}" for i in range(6 - _backbone_levels(state, SOURCE), 6)],
        "decoder.box_refine": refine,
        "decoder.share_heads": not refine,
        "decoder.point_anchors": not two_stage,
        "decoder.anchor_pos": False,
        "decoder.dynamic_query_pos": False,
        "decoder.look_forward_twice": False,
        "decoder.final_norm": False,
        "position_embedding.temperature": 10000.0,
        "position_embedding.offset": -0.5,
        # detrex's COCO loaders give RGB (img_format="RGB") normalised with these
        "pixel_mean": [123.675, 116.28, 103.53],
        "pixel_std": [58.395, 57.12, 57.375],
    }
    for part, prefix in (("encoder", n["enc"]), ("decoder", n["dec"])):
        values.update({
            f"{part}.num_layers": _count(state, rf"{re.escape(prefix)}\.(\d+)\."),
            f"{part}.num_heads": heads,
            f"{part}.num_points": NUM_POINTS,
            f"{part}.ffn_dim": int(state[f"{prefix}.0.ffns.0.layers.0.0.weight"].shape[0]),
            f"{part}.activation": "relu",
        })
    return values


def _check_shared(state: Dict[str, torch.Tensor], kind: str, num: int) -> None:
    """Without box refinement the ``num`` stored heads must be one head."""
    first = {k: v for k, v in state.items() if k.startswith(f"{kind}.0.")}
    for d in range(1, num):
        for k, v in first.items():
            other = state.get(k.replace(f"{kind}.0.", f"{kind}.{d}.", 1))
            if other is not None and other is not v and not torch.equal(other, v):
                raise ConversionError(f"{kind}.{d} differs from {kind}.0 but the checkpoint has no "
                                      "transformer.decoder.bbox_embed: per-layer heads without box "
                                      "refinement are not a detrex Deformable DETR d2kd knows")


def convert_state(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Maps the checkpoint's tensors to d2kd's names; returns ``(state, unused keys)``."""
    values = config_values(state)
    src = TensorSource(state)
    out: Dict[str, torch.Tensor] = {}
    take_backbone_and_layers(state, SOURCE, src, out, values)

    D = values["decoder.num_layers"]
    if values["decoder.share_heads"]:
        for kind in ("class_embed", "bbox_embed"):
            _check_shared(state, kind, D)
    for d in range(1 if values["decoder.share_heads"] else D):
        src.take_module(out, f"decoder.class_heads.{d}", f"class_embed.{d}")
        for j in range(3):
            src.take_module(out, f"decoder.box_heads.{d}.layers.{j}", f"bbox_embed.{d}.layers.{j}")
    if values["two_stage"]:
        src.take_module(out, "proposal_head.memory_proj", "transformer.enc_output")
        src.take_module(out, "proposal_head.memory_norm", "transformer.enc_output_norm")
        src.take_module(out, "proposal_head.class_head", f"class_embed.{D}")
        for j in range(3):
            src.take_module(out, f"proposal_head.box_head.layers.{j}", f"bbox_embed.{D}.layers.{j}")
        src.take_module(out, "query_proj.0", "transformer.pos_trans")
        src.take_module(out, "query_proj.1", "transformer.pos_trans_norm")
    else:
        out["query_embedding.weight"] = src.take("query_embedding.weight")
        src.take_module(out, "reference_points", "transformer.reference_points")

    # the shared copies of a head, and the decoder's references to the heads, are not left over
    unused = [k for k in src.left_over()
              if not re.match(r"(transformer\.decoder\.)?(class|bbox)_embed\.\d+\.", k)
              and not k.endswith("num_batches_tracked")]
    return out, unused


CLASS_HEADS = ("decoder.class_heads.", "proposal_head.class_head.")


def convert_release(state: Dict[str, torch.Tensor], num_classes: Optional[int] = None):
    """A detrex Deformable DETR state dict -> ``(d2kd state, config values, source)``.

    Args:
        num_classes: the class count wanted (None: the checkpoint's); another count than the
            checkpoint's is an error (detrex's rows are already detectron2's classes).
    """
    if detect(state) is None:
        raise ConversionError("not a detrex Deformable DETR checkpoint (neck.convs.*, transformer.level_embeds)")
    values = config_values(state)
    out, unused = convert_state(state)
    if unused:
        raise ConversionError(f"detrex Deformable DETR weights d2kd's DeformableDETR has no place for: {unused[:5]}"
                              + (f" (+{len(unused) - 5} more)" if len(unused) > 5 else ""))
    if num_classes is not None and num_classes != values["num_classes"]:
        raise ConversionError(f"the checkpoint predicts {values['num_classes']} classes, the config {num_classes}")
    return out, values, SOURCE
