"""transformers' Deformable DETR converted to d2kd computes what transformers computes.

Each variant (plain, iterative box refinement, two-stage) is built by transformers from a small
config with random weights, saved as a Hugging Face folder, converted, and both models run on
the same images in eval mode. Every decoder layer is compared where transformers exposes it
(hidden states and reference points), and the final class logits and boxes.
"""
import pytest
import torch
from detectron2.config import instantiate
from detectron2.structures import ImageList

from d2kd.convert import build_model_config, convert_hf_folder

VARIANTS = ("plain", "refine", "two_stage")
TOL = 1e-4


def _converted(folder):
    converted = convert_hf_folder(folder)
    model = instantiate(build_model_config(converted)).eval()
    model.load_state_dict(converted.state, strict=True)
    return model


def _images(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    H = max(h for h, _ in sizes)
    W = max(w for _, w in sizes)
    x = torch.zeros(len(sizes), 3, H, W)
    mask = torch.zeros(len(sizes), H, W, dtype=torch.long)
    for b, (h, w) in enumerate(sizes):
        x[b, :, :h, :w] = torch.randn(3, h, w, generator=g)
        mask[b, :h, :w] = 1
    return x, mask


def _compare(hf, ours, sizes):
    x, mask = _images(sizes)
    with torch.no_grad():
        out = hf(pixel_values=x, pixel_mask=mask)
        record = ours.run(ImageList(x, list(sizes)))
    got = record.outputs
    diffs = {
        # padded tokens are masked out of every attention, so only the valid ones are compared
        "encoder memory": (record.enc.memory - out.encoder_last_hidden_state)[~record.enc.padding_mask].abs().max(),
        "hidden (every layer)": (got.hidden - out.intermediate_hidden_states.transpose(0, 1)).abs().max(),
        "logits": (got.logits[-1] - out.logits).abs().max(),
        "boxes": (got.boxes[-1] - out.pred_boxes).abs().max(),
    }
    # transformers' reference after layer d: the refined box (refinement) or the initial point
    refs = out.intermediate_reference_points.transpose(0, 1)
    if ours.decoder.box_refine:
        diffs["references (every layer)"] = (got.boxes - refs).abs().max()
    else:
        diffs["reference points"] = (got.references[..., :2] - refs).abs().max()
    if record.proposals is not None:
        diffs["proposal logits"] = (record.proposals.all_logits - out.enc_outputs_class).abs().max()
        diffs["proposal boxes"] = (record.proposals.all_boxes - out.enc_outputs_coord_logits.sigmoid()).abs().max()
    return out, record, {k: float(v) for k, v in diffs.items()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_outputs_equal_transformers(hf_deformable, variant):
    hf, folder = hf_deformable(variant)
    ours = _converted(folder)
    assert ours.two_stage == (variant == "two_stage") and ours.decoder.box_refine == (variant != "plain")
    out, record, diffs = _compare(hf, ours, [(128, 128), (128, 128)])
    assert max(diffs.values()) < TOL, diffs
    # the comparison is not trivial: predictions vary over queries and images
    assert out.pred_boxes.std(1).min() > 1e-3 and out.logits.std(1).min() > 1e-2
    assert (out.logits[0] - out.logits[1]).abs().max() > 1e-2


@pytest.mark.parametrize("variant", ("plain", "refine"))
def test_padded_batch_equal_transformers(hf_deformable, variant):
    """Images of different sizes: padding masks, valid ratios and position embeddings agree."""
    hf, folder = hf_deformable(variant)
    _, _, diffs = _compare(hf, _converted(folder), [(128, 96), (96, 128)])
    assert max(diffs.values()) < TOL, diffs


def test_d2kd_inference_of_converted_model(hf_deformable):
    """The converted model's detectron2 forward returns the transformers model's top detections."""
    hf, folder = hf_deformable("two_stage")
    ours = _converted(folder)
    x, mask = _images([(128, 128)])
    image = x[0] * ours.pixel_std + ours.pixel_mean  # d2kd normalises the raw image itself
    with torch.no_grad():
        result = ours([{"image": image, "height": 128, "width": 128}])[0]["instances"]
        out = hf(pixel_values=x, pixel_mask=mask)
    scores = out.logits.sigmoid().flatten(1).topk(10).values[0]
    assert torch.allclose(result.scores[:10], scores, atol=TOL)
