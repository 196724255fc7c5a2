"""FLOPs and parameters of a config's model, with d2kd's attention ops counted.

    python -m d2kd.tools.analyze_model --config-file configs/kd_detr/dino_to_frcnn_builtin.py \
        [--num-inputs 1] [key=value ...]

Inference FLOPs (fvcore's convention: multiply-adds) are counted with detectron2's
``FlopCountAnalysis`` plus the handles of :mod:`d2kd.engine.flops` (deformable attention,
scaled dot-product attention), on the first images of ``dataloader.test``, averaged per image.
For a distillation config the student, the teacher and the distillation modules are reported
separately: student and teacher each on their own inference; the distillation modules by their
parameters and by the FLOPs of their own operations in one training step (the extra query
groups they add to the teacher's and the student's decoders are counted with those models'
training step, not here), measured with ``torch.utils.flop_counter`` and halved to multiply-adds.
"""
import argparse
import itertools
import sys
from typing import Dict, List, Optional

import torch
from torch import nn

from d2kd.engine.errors import D2KDUserError, one_line
from d2kd.engine.flops import flop_count_analysis


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def inference_flops(model: nn.Module, inputs: List[dict]) -> float:
    """Mean multiply-adds per image of ``model`` (eval mode) over ``inputs`` (one at a time)."""
    model.eval()
    total = 0
    for x in inputs:
        analysis = flop_count_analysis(model, [x])
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        total += analysis.total()
    return total / max(1, len(inputs))


def distillation_step_flops(distiller: nn.Module, batch: List[dict]) -> float:
    """Multiply-adds of the ``distill_losses`` modules' own operations in one training step."""
    from detectron2.utils.events import EventStorage
    from torch.utils.flop_counter import FlopCounterMode

    distiller.train()
    counter = FlopCounterMode(display=False)
    with EventStorage(0), counter:
        distiller(batch)
    counts = counter.get_flop_counts()  # by module path, e.g. "HeteroDistill.distill_losses.kd"
    methods = [k for k in counts if k.split(".")[-2:-1] == ["distill_losses"]]
    return sum(sum(counts[k].values()) for k in methods) / 2


def analyze(cfg, num_inputs: int = 1) -> Dict[str, Dict[str, Optional[float]]]:
    """``{part: {"params": n, "flops": per image}}`` for the model (or student, teacher and
    distillation modules) of ``cfg``."""
    from detectron2.config import instantiate

    model = instantiate(cfg.model)
    test_inputs = list(itertools.islice(
        (x for batch in instantiate(cfg.dataloader.test) for x in batch), num_inputs))
    student = getattr(model, "student", None)
    if student is None:
        return {"model": {"params": _params(model), "flops": inference_flops(model, test_inputs)}}
    report = {"student": {"params": _params(student),
                          "flops": inference_flops(student, test_inputs)}}
    teacher = getattr(model, "teacher", None)
    inner = getattr(teacher, "model", None)
    if isinstance(inner, nn.Module):
        report["teacher"] = {"params": _params(inner), "flops": inference_flops(inner, test_inputs)}
    train_batch = next(iter(instantiate(cfg.dataloader.train)))
    report["distillation modules"] = {
        "params": _params(model.distill_losses),
        "flops": distillation_step_flops(model, train_batch) / max(1, len(train_batch)),
    }
    return report


def format_report(report) -> str:
    lines = [f"{'part':<22} {'params (M)':>11} {'GFLOPs/image':>13}"]
    for name, r in report.items():
        flops = "n/a" if r["flops"] is None else f"{r['flops'] / 1e9:.3f}"
        lines.append(f"{name:<22} {r['params'] / 1e6:>11.3f} {flops:>13}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--num-inputs", type=int, default=1, help="test images to average over")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key=value overrides")
    args = parser.parse_args(argv)
    from d2kd.engine.config import load_config

    try:
        cfg = load_config(args.config_file, args.opts)
    except D2KDUserError as e:
        print(f"analyze_model: error: {one_line(e)}", file=sys.stderr)
        return 2
    with torch.no_grad():
        print(format_report(analyze(cfg, args.num_inputs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
