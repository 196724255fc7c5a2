"""The detrex Deformable DETR mapping against detrex's real parameter list (names and shapes).

``fixtures/release_state_dicts.json`` holds every state-dict name and shape of detrex's plain
Deformable DETR R-50 (commit e244e6c, ``projects/deformable_detr/configs/models/deformable_detr_r50.py``,
see the file's ``_source``). The box-refinement and two-stage variants are derived from it by what
detrex's ``DeformableDETR.__init__`` / ``DeformableDetrTransformer.__init__`` add at that commit
(per-layer heads referenced by the decoder; a proposal head and ``pos_trans`` instead of the
learned queries), not dumped. Names, shapes and layouts only, not outputs.
"""
import json
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from d2kd.convert import ConversionError, load_release_for_model
from d2kd.convert.detrex_deformable_detr import convert_release, detect
from d2kd.convert.hf import model_config_path, overrides
from d2kd.convert.releases import convert_any_release

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "release_state_dicts.json")
C, D = 256, 6


def _state(variant="plain"):
    """detrex's state dict on the meta device, heads as real (distinct or shared) tensors."""
    with open(FIXTURE) as f:
        shapes = json.load(f)["detrex_deformable_detr_r50"]
    state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    g = torch.Generator().manual_seed(0)
    refine = variant in ("refine", "two_stage")
    num_pred = D + 1 if variant == "two_stage" else D
    for kind, layers in (("class_embed", {"": (80, C)}), ("bbox_embed", {f".layers.{j}": s for j, s in
                                                                           enumerate([(C, C), (C, C), (4, C)])})):
        for d in range(num_pred):
            for sub, (rows, cols) in layers.items():
                for p, shape in (("weight", (rows, cols)), ("bias", (rows,))):
                    key = f"{kind}{'.' + str(d)}{sub}.{p}"
                    shared = f"{kind}.0{sub}.{p}"
                    state[key] = torch.randn(shape, generator=g) if refine or d == 0 else state[shared]
                    if refine and (kind == "bbox_embed" or variant == "two_stage"):
                        state[f"transformer.decoder.{key}"] = state[key]
    if variant == "two_stage":
        for k in ("query_embedding.weight", "transformer.reference_points.weight", "transformer.reference_points.bias"):
            del state[k]
        for name, shape in (("enc_output", (C, C)), ("pos_trans", (2 * C, 2 * C))):
            state[f"transformer.{name}.weight"] = torch.empty(shape, device="meta")
            state[f"transformer.{name}.bias"] = torch.empty(shape[:1], device="meta")
            norm = "enc_output_norm" if name == "enc_output" else "pos_trans_norm"
            for p in ("weight", "bias"):
                state[f"transformer.{norm}.{p}"] = torch.empty(shape[:1], device="meta")
    return state


def _meta_model(values):
    cfg = LazyConfig.load(model_config_path("deformable_detr"))
    LazyConfig.apply_overrides(cfg, overrides(values))
    with torch.device("meta"):
        model = instantiate(cfg.model)
    for name in ("pixel_mean", "pixel_std"):  # read by the structure check
        model.register_buffer(name, torch.tensor(values[name]).view(-1, 1, 1), persistent=False)
    return model


def test_fixture_is_the_plain_model():
    state = _state()
    assert "query_embedding.weight" in state and "transformer.decoder.bbox_embed.0.layers.0.weight" not in state
    with open(FIXTURE) as f:
        assert set(json.load(f)["detrex_deformable_detr_r50"]) == set(state)


@pytest.mark.parametrize("variant", ["plain", "refine", "two_stage"])
def test_every_parameter_filled_once(variant):
    state = _state(variant)
    assert detect(state) == "detrex"
    out, values, source = convert_release(state, num_classes=80)
    assert source == "detrex"
    expected = {k: tuple(v.shape) for k, v in _meta_model(values).state_dict().items()
                if not k.endswith("num_batches_tracked")}
    assert set(out) == set(expected)  # every d2kd tensor, nothing else
    wrong = {k: (tuple(v.shape), expected[k]) for k, v in out.items() if tuple(v.shape) != expected[k]}
    assert not wrong, wrong
    # no source tensor fills two d2kd tensors (the heads shared by detrex are one d2kd head)
    ids = [id(v) for v in out.values()]
    assert len(ids) == len(set(ids))
    assert values["two_stage"] == (variant == "two_stage")
    assert values["decoder.box_refine"] == (variant != "plain")
    assert values["num_queries"] == 300 and values["num_classes"] == 80 and values["encoder.num_heads"] == 8
    assert values["backbone.bottom_up.stages.depth"] == 50 and values["query_type"] == "paper"


def test_heads_and_queries_go_where_detrex_uses_them():
    state = _state("two_stage")
    out = convert_release(state)[0]
    assert out["decoder.class_heads.5.weight"] is state["class_embed.5.weight"]
    assert out["proposal_head.class_head.weight"] is state["class_embed.6.weight"]
    assert out["proposal_head.box_head.layers.2.bias"] is state["bbox_embed.6.layers.2.bias"]
    assert out["query_proj.0.weight"] is state["transformer.pos_trans.weight"]
    plain = _state()
    out = convert_release(plain)[0]
    assert out["query_embedding.weight"] is plain["query_embedding.weight"]
    assert out["decoder.class_heads.0.weight"] is plain["class_embed.0.weight"]
    assert out["backbone.extra_projs.0.0.weight"] is plain["neck.extra_convs.0.conv.weight"]
    assert out["decoder.layers.2.norm2.weight"] is plain["transformer.decoder.layers.2.norms.1.weight"]


def test_wrong_files():
    state = _state()
    with pytest.raises(ConversionError, match="predicts 80 classes, the config 12"):
        convert_release(state, num_classes=12)
    untied = dict(state, **{"class_embed.3.weight": torch.randn(80, C)})
    with pytest.raises(ConversionError, match="class_embed.3 differs from class_embed.0 but the checkpoint has no "
                                              "transformer.decoder.bbox_embed"):
        convert_release(untied)
    no_refine = {k: v for k, v in _state("two_stage").items() if not k.startswith("transformer.decoder.")
                 or ".layers." in k and "embed" not in k}
    with pytest.raises(ConversionError, match="two-stage detrex Deformable DETR without box refinement"):
        convert_release(no_refine)
    extra = dict(state, **{"transformer.decoder.norm.weight": torch.empty(C, device="meta")})
    with pytest.raises(ConversionError, match=r"no place for: \['transformer.decoder.norm.weight'\]"):
        convert_release(extra)
    with pytest.raises(ConversionError, match="not a detrex Deformable DETR checkpoint"):
        convert_release({"model.weight": torch.zeros(1)})
    with pytest.raises(ConversionError, match="not a checkpoint d2kd converts"):
        convert_any_release({"model.weight": torch.zeros(1)})


def test_dino_and_deformable_are_told_apart():
    from d2kd.convert.releases import find_release
    from d2kd.convert import detrex_deformable_detr, dino_release

    with open(FIXTURE) as f:
        dino = {k: torch.empty(v, device="meta") for k, v in json.load(f)["detrex_dino_r50_4scale"].items()}
    assert find_release(dino) is dino_release and detect(dino) is None
    assert find_release(_state()) is detrex_deformable_detr and dino_release.detect(_state()) is None
    assert convert_any_release(_state("refine"))[2] == "deformable_detr"


def test_as_teacher_checks_the_teacher_config():
    """``model.teacher.weights=<detrex deformable>.pth``: the teacher config must be the same model."""
    state = _state("two_stage")
    values = convert_release(state)[1]
    model = _meta_model(values)
    assert set(load_release_for_model(state, model, "ddetr.pth")) == set(model.state_dict())
    d2kd_default = _meta_model(dict(values, **{"query_type": "anchor", "decoder.point_anchors": False,
                                                "decoder.anchor_pos": True}))
    with pytest.raises(ConversionError, match=r"query_type='paper' \(the teacher config has 'anchor'\).*"
                                              r"decoder.anchor_pos=False \(the teacher config has True\)"):
        load_release_for_model(state, d2kd_default, "ddetr.pth")
