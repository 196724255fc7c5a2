"""transformers' DAB-DETR converted to d2kd computes what transformers computes.

Built by transformers from a small config with random weights, saved, converted, and both run
in eval mode on the same images. transformers' detection output gives the last layer; its
``DabDetrModel`` exposes every decoder layer's (normalised) hidden state and reference box, and
transformers' own heads on them give every layer's logits and boxes.
"""
import pytest
import torch
from detectron2.config import instantiate
from detectron2.structures import ImageList

from d2kd.convert import build_model_config, convert_hf_folder
from d2kd.layers import inverse_sigmoid

TOL = 1e-4


def _converted(folder):
    converted = convert_hf_folder(folder)
    model = instantiate(build_model_config(converted)).eval()
    model.load_state_dict(converted.state, strict=True)
    return model


def _images(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    H, W = max(h for h, _ in sizes), max(w for _, w in sizes)
    x = torch.zeros(len(sizes), 3, H, W)
    mask = torch.zeros(len(sizes), H, W, dtype=torch.long)
    for b, (h, w) in enumerate(sizes):
        x[b, :, :h, :w] = torch.randn(3, h, w, generator=g)
        mask[b, :h, :w] = 1
    return x, mask


@pytest.mark.parametrize("sizes", [[(128, 128), (128, 128)], [(128, 96), (96, 128)]], ids=["same", "padded"])
@pytest.mark.parametrize("setting", [{}, {"keep_query_pos": True, "activation_function": "relu"}],
                         ids=["default", "keep_query_pos_relu"])
def test_outputs_equal_transformers(hf_dab, sizes, setting):
    hf, folder = hf_dab(**setting)
    ours = _converted(folder)
    x, mask = _images(sizes)
    with torch.no_grad():
        out = hf(pixel_values=x, pixel_mask=mask)
        inner = hf.model(pixel_values=x, pixel_mask=mask)
        record = ours.run(ImageList(x, list(sizes)))
        hidden = inner.intermediate_hidden_states  # [D, B, N, C]
        refs = inner.reference_points  # [D, B, N, 4]
        logits = hf.class_embed(hidden)
        boxes = (hf.bbox_predictor(hidden) + inverse_sigmoid(refs)).sigmoid()
    got = record.outputs
    diffs = {
        "final logits": (got.logits[-1] - out.logits).abs().max(),
        "final boxes": (got.boxes[-1] - out.pred_boxes).abs().max(),
        "hidden (every layer)": (got.hidden - hidden).abs().max(),
        "references (every layer)": (got.references - refs).abs().max(),
        "logits (every layer)": (got.logits - logits).abs().max(),
        "boxes (every layer)": (got.boxes - boxes).abs().max(),
    }
    diffs = {k: float(v) for k, v in diffs.items()}
    assert max(diffs.values()) < TOL, diffs
    assert torch.equal(out.logits, logits[-1])  # our reading of transformers' heads is its own
    # the comparison is not trivial: predictions vary over queries
    assert out.pred_boxes.std(1).mean() > 1e-2 and hidden.std(2).mean() > 1e-2 and out.logits.std(1).mean() > 1e-2
    assert (record.queries.content == 0).all()  # DAB-DETR's queries: zero content, 4-d anchors


@pytest.mark.parametrize("change, message", [
    ({"num_patterns": 3}, "num_patterns=3: d2kd's DAB-DETR has no pattern embeddings"),
    ({"temperature_width": 10}, "temperature_height=20 != temperature_width=10"),
])
def test_unsupported_options(hf_dab, tmp_path, change, message):
    import json
    import shutil

    folder = tmp_path / "dab"
    shutil.copytree(hf_dab()[1], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(change)
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=message):
        convert_hf_folder(str(folder))


def test_folder_as_teacher_weights(hf_dab):
    from d2kd.meta_arch.teacher import FrozenTeacher, TeacherCheckpointError

    _, folder = hf_dab()
    converted = convert_hf_folder(folder)
    teacher = FrozenTeacher(instantiate(build_model_config(converted)), weights=folder)
    assert all(torch.equal(teacher.model.state_dict()[k], v) for k, v in converted.state.items())
    converted.values["decoder.keep_query_pos"] = True  # a teacher config that computes otherwise
    with pytest.raises(TeacherCheckpointError, match="decoder.keep_query_pos=False"):
        FrozenTeacher(instantiate(build_model_config(converted)), weights=folder)
