"""Magnitude of each DETRDistill term against the student's own detection loss.

Usage::

    python benchmarks/detrdistill_terms.py [--config detrdistill/dino_R50_to_R18_builtin.py]
        [--seeds 0 1 2] [--size 192] [--boxes 4]

Builds the config's teacher and student at random initialisation (the smoke-test preparation:
no checkpoint is read), runs one training forward per seed on a batch of two made-up images of
``--size`` pixels with ``--boxes`` objects each, and prints every ``loss_kd_*`` term (already
weighted by the config's lambdas), the sum of the student's detection losses and each term's
ratio to that sum. The figure of interest is whether lambda2 * L_fd is of the order of the other
terms (issue 10 found it ~1e-3 of them with the old mask). For comparison, the line
``released-code FD formula`` evaluates, on the same features, adapters and matches, the
formula of the authors' released code: per teacher stage one mask ``sum_i q_i cos(Q_i, F^T)``
clamped at 0.01 and divided by its peak, the per-element MSE of the masked features, summed
over stages and levels without a weight.
"""
import argparse
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="detrdistill/dino_R50_to_R18_builtin.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--boxes", type=int, default=4)
    args = parser.parse_args(argv)

    import torch
    from detectron2.config import LazyConfig, instantiate
    from detectron2.utils.events import EventStorage

    from d2kd.engine.smoke import num_classes_of, prepare_smoke_config, tiny_batch

    from d2kd.distill import detrdistill as dd

    cfg = prepare_smoke_config(LazyConfig.load(os.path.join(ROOT, "configs", args.config)))
    rows = {}
    steps = []
    real_forward = dd.TargetAwareFeatureDistill.forward

    def spy(self, step):
        steps.append((self, step))
        return real_forward(self, step)

    dd.TargetAwareFeatureDistill.forward = spy
    for seed in args.seeds:
        torch.manual_seed(seed)
        model = instantiate(cfg.model).train()
        batch = tiny_batch(num_classes_of(cfg.model), sizes=[(args.size, args.size)] * 2,
                           boxes_per_image=args.boxes, seed=seed)
        with EventStorage(0), torch.no_grad():
            losses = {k: float(v) for k, v in model(batch).items()}
        det = sum(v for k, v in losses.items() if not k.startswith("loss_kd_"))
        rows.setdefault("detection (sum)", []).append(det)
        if steps:
            rows.setdefault("released-code FD formula", []).append(released_fd(*steps.pop(), dd))
        for k, v in losses.items():
            if k.startswith("loss_kd_"):
                rows.setdefault(k, []).append(v)
    print(f"{args.config}, random init, {len(args.seeds)} seeds, 2 images of {args.size} px, "
          f"{args.boxes} objects each")
    det = statistics.mean(rows["detection (sum)"])
    print(f"{'term':28s} {'mean':>10s} {'min':>10s} {'max':>10s} {'/ detection':>12s}")
    for k, values in rows.items():
        mean = statistics.mean(values)
        print(f"{k:28s} {mean:10.4g} {min(values):10.4g} {max(values):10.4g} {mean / det:12.3g}")


def released_fd(fd, step, dd):
    """The released code's FD value on this step (module doc)."""
    import torch
    import torch.nn.functional as F

    from d2kd.distill.levels import pair_levels, resize_like

    out = step.teacher.record.outputs
    matching = dd.teacher_stage_matching(step)
    total = 0.0
    with torch.no_grad():
        for k in range(out.logits.shape[0]):
            q = dd.quality_scores(out.logits[k].float(), out.boxes[k].float(), matching[k], step.targets)
            queries = F.normalize(out.hidden[k].float(), dim=-1)
            for adapter, (ti, si) in zip(fd.adapters, pair_levels(step.teacher.strides, step.student.strides)):
                target = step.teacher.features[ti].float()
                pred = resize_like(adapter(step.student.features[si]), target).float()
                cos = torch.einsum("bnc,bchw->bnhw", queries, F.normalize(target, dim=1))
                mask = torch.einsum("bnhw,bn->bhw", cos, q).clamp(min=1e-2)
                mask = (mask / mask.flatten(1).amax(-1)[:, None, None])[:, None]
                total += float(F.mse_loss(mask * pred, mask * target))
    return total


if __name__ == "__main__":
    main()
