"""The DINO-release mapping against the releases' real parameter lists (names and shapes).

``fixtures/release_state_dicts.json`` holds every state-dict name and shape of the IDEA-Research
DINO-4scale R-50 (commit faa8520) and of detrex's DINO R-50 4-scale (commit e244e6c), each built
from its own repository's code and config (see the file's ``_source``). Neither code base installs
here, so these tests check names, shapes and layouts, not outputs; ``benchmarks/check_dino_release.py``
compares outputs against a checkout of either repository.
"""
import json
import os
import re

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from d2kd.convert import ConversionError
from d2kd.convert.dino_release import coco_category_ids, convert_release, detect
from d2kd.convert.hf import model_config_path, overrides

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "release_state_dicts.json")
C = 256


def _release(name):
    """The release's state dict on the meta device (shapes only), with the tensors it shares
    stored as one object (shared heads, the decoder's references to them), and real values where
    a test reads them."""
    with open(FIXTURE) as f:
        shapes = json.load(f)[name]
    state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    g = torch.Generator().manual_seed(0)
    for key in ("transformer.decoder.ref_point_head.layers.0.weight", "class_embed.0.weight", "label_enc.weight",
                "class_embed.6.weight"):
        if key in state:
            state[key] = torch.randn(shapes[key], generator=g)
    for key in list(state):
        m = re.match(r"(transformer\.decoder\.)?(class|bbox)_embed\.(\d+)\.(.*)", key)
        if m:
            layer = "0" if name.startswith("idea") else m[3]
            state[key] = state[f"{m[2]}_embed.{layer}.{m[4]}"]
    return state


def _d2kd_shapes(values):
    cfg = LazyConfig.load(model_config_path("dino"))
    LazyConfig.apply_overrides(cfg, overrides(values))
    with torch.device("meta"):
        model = instantiate(cfg.model)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name, source", [("idea_dino_4scale_r50", "idea"), ("detrex_dino_r50_4scale", "detrex")])
def test_every_tensor_has_its_place(name, source):
    state = _release(name)
    assert detect(state) == source
    out, values, found = convert_release(state, num_classes=80)
    assert found == source
    expected = _d2kd_shapes(values)
    assert set(out) == set(expected)
    wrong = {k: (tuple(v.shape), expected[k]) for k, v in out.items() if tuple(v.shape) != expected[k]}
    assert not wrong, wrong
    assert values["num_classes"] == 80 and values["num_queries"] == 900 and values["decoder.num_layers"] == 6
    assert values["decoder.share_heads"] == (source == "idea")


@pytest.mark.parametrize("name", ["idea_dino_4scale_r50", "detrex_dino_r50_4scale"])
def test_positional_query_columns_are_reordered(name):
    """The releases embed a box as (y, x, w, h), d2kd as (x, y, w, h)."""
    state = _release(name)
    source = state["transformer.decoder.ref_point_head.layers.0.weight"]
    out = convert_release(state)[0]["decoder.query_pos_head.layers.0.weight"]
    half = C // 2
    assert torch.equal(out[:, :half], source[:, half:2 * half])  # x
    assert torch.equal(out[:, half:2 * half], source[:, :half])  # y
    assert torch.equal(out[:, 2 * half:], source[:, 2 * half:])  # w, h


def test_idea_coco_ids_become_detectron2_classes():
    state = _release("idea_dino_4scale_r50")
    out, values, _ = convert_release(state, num_classes=80)
    ids = coco_category_ids()
    assert len(ids) == 80 and ids[:3] == [1, 2, 3] and ids[-1] == 90
    assert torch.equal(out["decoder.class_heads.0.weight"], state["class_embed.0.weight"][ids])
    assert torch.equal(out["denoising.label_embed.weight"], state["label_enc.weight"][ids])
    kept = convert_release(state)[0]  # all 91 rows; the label book's extra row is dropped
    assert kept["decoder.class_heads.0.weight"].shape[0] == 91 and kept["denoising.label_embed.weight"].shape[0] == 91


def test_detrex_per_layer_heads_and_encoder_head():
    state = _release("detrex_dino_r50_4scale")
    out = convert_release(state)[0]
    assert out["decoder.class_heads.0.weight"] is state["class_embed.0.weight"]
    assert out["proposal_head.class_head.weight"] is state["class_embed.6.weight"]


def test_release_errors():
    state = _release("idea_dino_4scale_r50")
    with pytest.raises(ConversionError, match="predicts 91 classes, the config 12"):
        convert_release(state, num_classes=12)
    untied = dict(state, **{"class_embed.3.weight": torch.randn(91, C)})
    with pytest.raises(ConversionError, match="class_embed.3 differs from class_embed.0: per-layer heads"):
        convert_release(untied)
    extra = dict(state, **{"transformer.decoder.query_scale.layers.0.weight": torch.empty(C, C, device="meta")})
    with pytest.raises(ConversionError, match="no place for: \\['transformer.decoder.query_scale.layers.0.weight'\\]"):
        convert_release(extra)
    with pytest.raises(ConversionError, match="not a DINO release checkpoint"):
        convert_release({"model.weight": torch.zeros(1)})


def _meta_model(values):
    cfg = LazyConfig.load(model_config_path("dino"))
    LazyConfig.apply_overrides(cfg, overrides(values))
    with torch.device("meta"):
        return instantiate(cfg.model)


def test_release_as_teacher_checks_the_teacher_config():
    """What ``model.teacher.weights=<release>.pth`` does: convert for the teacher's class count,
    and refuse a teacher config that would compute something else than the release."""
    from d2kd.convert import load_release_for_model

    state = _release("detrex_dino_r50_4scale")
    values = convert_release(state)[1]
    model = _meta_model(values)
    assert set(load_release_for_model(state, model, "dino.pth")) == set(model.state_dict())
    d2kd_default = _meta_model(dict(values, **{"decoder.raw_refinement": False, "position_embedding.temperature": 20.0}))
    with pytest.raises(ConversionError, match=r"decoder.raw_refinement=True \(the teacher config has False\).*"
                                              r"position_embedding.temperature=10000.0 \(the teacher config has 20.0\)"):
        load_release_for_model(state, d2kd_default, "dino.pth")
    assert load_release_for_model({"w": torch.zeros(1)}, model, "other.pth") is None
