"""Largest output differences between transformers' detectors and their d2kd conversions.

    python benchmarks/hf_equivalence.py

For Deformable DETR (plain, box refinement, two-stage) and DAB-DETR: the small random-weight
models of the equality tests (``tests/convert/conftest.py``), saved as Hugging Face folders,
converted, run on the same images in eval mode (unpadded and padded batches). Prints the largest
absolute difference of the class logits and boxes over every decoder layer. Offline.
"""
import importlib.util
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from detectron2.config import instantiate  # noqa: E402
from detectron2.structures import ImageList  # noqa: E402

from d2kd.convert import build_model_config, convert_hf_folder  # noqa: E402
from d2kd.layers import inverse_sigmoid  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _helpers():
    spec = importlib.util.spec_from_file_location("hf_models", os.path.join(ROOT, "tests", "convert", "conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _images(sizes):
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(len(sizes), 3, 128, 128)
    mask = torch.zeros(len(sizes), 128, 128, dtype=torch.long)
    for b, (h, w) in enumerate(sizes):
        x[b, :, :h, :w] = torch.randn(3, h, w, generator=g)
        mask[b, :h, :w] = 1
    return x, mask


def hf_layers(name, hf, x, mask):
    """transformers' class logits and boxes of every decoder layer, [D, B, N, ...]."""
    if name == "dab_detr":
        inner = hf.model(pixel_values=x, pixel_mask=mask)
        hidden, refs = inner.intermediate_hidden_states, inner.reference_points
        return hf.class_embed(hidden), (hf.bbox_predictor(hidden) + inverse_sigmoid(refs)).sigmoid()
    out = hf(pixel_values=x, pixel_mask=mask)
    hidden = out.intermediate_hidden_states.transpose(0, 1)
    logits, boxes = [], []
    for d in range(hidden.shape[0]):
        delta = hf.bbox_embed[d](hidden[d])
        ref = inverse_sigmoid(out.init_reference_points if d == 0 else out.intermediate_reference_points[:, d - 1])
        if ref.shape[-1] == 2:
            delta = torch.cat([delta[..., :2] + ref, delta[..., 2:]], -1)
        else:
            delta = delta + ref
        logits.append(hf.class_embed[d](hidden[d]))
        boxes.append(delta.sigmoid())
    return torch.stack(logits), torch.stack(boxes)


def main():
    h = _helpers()
    from transformers import DabDetrForObjectDetection, DeformableDetrForObjectDetection

    cases = [(f"deformable_detr {v}", "deformable_detr", DeformableDetrForObjectDetection, h.deformable_detr_config(v), {})
             for v in ("plain", "refine", "two_stage")]
    cases.append(("dab_detr", "dab_detr", DabDetrForObjectDetection, h.dab_detr_config(),
                  dict(scale=0.1, sharpen=("pos_proj", "pos_sine_proj", "query_refpoint", "class_embed"))))
    for title, name, cls, config, kwargs in cases:
        with tempfile.TemporaryDirectory() as folder:
            hf = h.save_and_reload(cls, config, folder, **kwargs)
            converted = convert_hf_folder(folder)
            ours = instantiate(build_model_config(converted)).eval()
            ours.load_state_dict(converted.state, strict=True)
        for batch, sizes in (("unpadded", [(128, 128)] * 2), ("padded", [(128, 96), (96, 128)])):
            if name == "deformable_detr" and "two_stage" in title and batch == "padded":
                continue  # transformers may rank padded tokens as proposals (+inf boxes), d2kd never does
            x, mask = _images(sizes)
            with torch.no_grad():
                logits, boxes = hf_layers(name, hf, x, mask)
                got = ours.run(ImageList(x, list(sizes))).outputs
            print(f"{title:28s} {batch:9s} layers {got.logits.shape[0]}: max |logits diff| "
                  f"{(got.logits - logits).abs().max():.1e}  max |boxes diff| {(got.boxes - boxes).abs().max():.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
