"""Numerical check of the DINO-release converter against the release's own code (one-off).

    python benchmarks/check_dino_release.py --source idea --src path/to/IDEA-Research/DINO
    python benchmarks/check_dino_release.py --source detrex --src path/to/IDEA-Research/detrex

Neither code base installs here (compiled ops, timm, ...), so this is not a test: it imports the
checkout as it lies (the compiled deformable attention replaced by the release's own
pure-PyTorch reference, the unused ConvNeXt/Swin/logging imports stubbed), builds the R-50
4-scale DINO of the release's config with random weights, converts its state dict with
:mod:`d2kd.convert.dino_release`, and runs both in eval mode on the same two images (one padded).
It prints the largest differences of every decoder layer's class logits and boxes.

On a padded image the two differ by design: the releases score padded and border tokens like the
others and give them +inf box logits, so with few tokens per query (here 1360 tokens for 900
queries) their top-k takes many of them, while d2kd ranks them last; the selected queries, and
their order, then differ.
"""
import argparse
import dataclasses
import os
import sys
import types

import torch


def _stub(name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod


def _none(*args, **kwargs):
    return None


def build_idea(src):
    sys.path.insert(0, src)
    _stub("MultiScaleDeformableAttention")
    for name in ("timm", "timm.models"):
        _stub(name)
    _stub("timm.models.layers", DropPath=object, to_2tuple=_none, trunc_normal_=_none)
    import argparse as ap

    from models.dino.ops.functions import ms_deform_attn_func as f
    from models.dino.ops.modules import ms_deform_attn as m

    class Reference:  # the release's pure-PyTorch deformable attention
        @staticmethod
        def apply(value, shapes, level_start, locations, weights, im2col_step):
            return f.ms_deform_attn_core_pytorch(value, shapes, locations, weights)

    m.MSDeformAttnFunction = Reference
    ns = {}
    for cfg in ("config/DINO/coco_transformer.py", "config/DINO/DINO_4scale.py"):
        exec(open(os.path.join(src, cfg)).read(), ns)
    args = ap.Namespace(**{k: v for k, v in ns.items() if not k.startswith("__")})
    args.device, args.masks, args.dataset_file, args.lr_backbone = "cpu", False, "coco", 1e-5
    args.backbone_freeze_keywords, args.use_checkpoint, args.backbone_dir = None, False, None
    import models.dino.backbone as backbone

    backbone.is_main_process = lambda: False  # no ImageNet download
    from models.dino.dino import build_dino
    from util.misc import NestedTensor

    model = build_dino(args)[0].eval()

    def run(x, mask):
        out = model(NestedTensor(x, mask))
        layers = out["aux_outputs"] + [{"pred_logits": out["pred_logits"], "pred_boxes": out["pred_boxes"]}]
        return (torch.stack([o["pred_logits"] for o in layers]), torch.stack([o["pred_boxes"] for o in layers]),
                out["interm_outputs"]["pred_boxes"])

    return model, run


def build_detrex(src):
    sys.path.insert(0, src)
    _stub("detrex._C")
    _stub("wandb")
    _stub("einops", rearrange=_none, repeat=_none)
    _stub("cv2", __version__="4.0", ocl=types.SimpleNamespace(setUseOpenCL=_none), setNumThreads=_none)
    for name in ("timm", "timm.models", "fairscale", "fairscale.nn"):
        _stub(name)
    _stub("timm.models.layers", DropPath=object, Mlp=object, to_2tuple=_none, trunc_normal_=_none)
    _stub("fairscale.nn.checkpoint", checkpoint_wrapper=_none)
    from detectron2.config import LazyConfig, instantiate
    from detectron2.structures import ImageList

    cfg = LazyConfig.load(os.path.join(src, "projects/dino/configs/models/dino_r50.py"))
    cfg.model.device = "cpu"
    model = instantiate(cfg.model).eval()

    def run(x, mask):
        # detrex's DINO.forward takes detectron2 inputs; its transformer call is reproduced here
        # on already normalised, padded images (the part that follows the preprocessing)
        images = ImageList(x, [(int((~m).any(1).sum()), int((~m).any(0).sum())) for m in mask])
        features = model.backbone(images.tensor)
        multi_level_feats = model.neck(features)
        masks, pos = [], []
        for feat in multi_level_feats:
            masks.append(torch.nn.functional.interpolate(mask[None].float(), size=feat.shape[-2:]).bool()[0])
            pos.append(model.position_embedding(masks[-1]))
        (inter_states, init_reference, inter_references, enc_state, enc_reference) = model.transformer(
            multi_level_feats, masks, pos, (None, None), attn_masks=[None, None])
        logits, boxes = [], []
        from detrex.utils import inverse_sigmoid

        for lvl in range(inter_states.shape[0]):
            reference = inverse_sigmoid(init_reference if lvl == 0 else inter_references[lvl - 1])
            logits.append(model.class_embed[lvl](inter_states[lvl]))
            boxes.append((model.bbox_embed[lvl](inter_states[lvl]) + reference).sigmoid())
        return torch.stack(logits), torch.stack(boxes), init_reference

    return model, run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=("idea", "detrex"), required=True)
    parser.add_argument("--src", required=True, help="checkout of the release's repository")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, run = (build_idea if args.source == "idea" else build_detrex)(os.path.abspath(args.src))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random heads and offsets, so that every weight matters
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    from detectron2.config import LazyConfig, instantiate
    from detectron2.structures import ImageList

    from d2kd.convert.dino_release import convert_release
    from d2kd.convert.hf import model_config_path, overrides

    out, values, source = convert_release(state)
    cfg = LazyConfig.load(model_config_path("dino"))
    LazyConfig.apply_overrides(cfg, overrides(values))
    ours = instantiate(cfg.model).eval()
    ours.load_state_dict(out, strict=True)

    print(f"{source} DINO R-50 4-scale, {values['num_classes']} classes, {values['num_queries']} queries, eval mode")
    # 256 px: the 900 queries need at least 900 encoder tokens (1360 here)
    for case, width in (("2 images of 256 x 256", 256), ("2 images, the second 256 x 192 padded to 256", 192)):
        x = torch.randn(2, 3, 256, 256, generator=g)
        mask = torch.zeros(2, 256, 256, dtype=torch.bool)
        mask[1, :, width:] = True
        x[1, :, :, width:] = 0
        with torch.no_grad():
            logits, boxes, anchors = run(x, mask)
            record = ours.run(ImageList(x, [(256, 256), (256, width)]))
        # DINO's content queries belong to slots and its anchors come ranked by score, so two
        # scores 1e-6 apart ranked the other way pair other content with the anchors: decode
        # d2kd's anchors again in the release's ranking (matched box for box)
        det = record.queries
        gap = (anchors[:, :, None] - det.anchor_logits.sigmoid()[:, None]).abs().amax(-1)  # [B, N, N]
        nearest = gap.min(-1)
        paired = nearest.values < 1e-5
        ranked = dataclasses.replace(det, anchor_logits=det.anchor_logits.gather(1, nearest.indices[..., None].expand(-1, -1, 4)))
        with torch.no_grad():
            got = ours.decode(record.enc, [ranked])["det"]
        keep = paired[:, :, None]
        print(f"{case}: {int(paired.sum())} of {paired.numel()} release anchors found among d2kd's")
        for d in range(logits.shape[0]):
            dl = ((got.logits[d] - logits[d]).abs() * keep).max()
            db = ((got.boxes[d] - boxes[d]).abs() * keep).max()
            print(f"  decoder layer {d}: max |logits diff| {dl:.2e}  max |boxes diff| {db:.2e}")


if __name__ == "__main__":
    main()
