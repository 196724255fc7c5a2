"""Exports the student of a distillation checkpoint as a plain detector checkpoint.

    python -m d2kd.tools.export_student output/kd/model_final.pth output/kd/student.pth \
        [--check-config configs/detr/dino_R18_builtin.py]

The result is ``{"model": student_state_dict}``, loadable by detectron2's DetectionCheckpointer
into the plain student config (``train.init_checkpoint=student.pth`` or ``--eval-only``) with no
d2kd distillation code involved. With ``--check-config`` the student config is built and the
weights are loaded strictly, so a mismatch is reported here rather than at evaluation time.
"""
import argparse
import os
import sys
import tempfile

import torch

from d2kd.meta_arch.base import student_weights


def export_student(src: str, dst: str) -> int:
    """Writes the student weights of checkpoint ``src`` to ``dst`` atomically; returns #tensors."""
    if not os.path.isfile(src):
        raise FileNotFoundError(f"checkpoint not found: {src!r}")
    data = torch.load(src, map_location="cpu", weights_only=False)
    state = data["model"] if isinstance(data, dict) and "model" in data else data
    weights = student_weights(state)
    out_dir = os.path.dirname(os.path.abspath(dst))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pth", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"model": weights, "__exported_from__": os.path.abspath(src)}, f)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return len(weights)


def check_loads(config_file: str, weights_file: str) -> None:
    """Builds the plain student from ``config_file`` and loads ``weights_file`` strictly."""
    from detectron2.config import LazyConfig, instantiate

    from d2kd.meta_arch.teacher import check_state_dict_fits

    cfg = LazyConfig.load(config_file)
    model = instantiate(cfg.model)
    state = torch.load(weights_file, map_location="cpu", weights_only=False)["model"]
    check_state_dict_fits(state, model, weights_file, what="student")
    model.load_state_dict(state, strict=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a distillation run's checkpoint (model_final.pth)")
    parser.add_argument("output", help="where to write the student checkpoint")
    parser.add_argument("--check-config", help="plain student config to load the result into")
    args = parser.parse_args(argv)
    n = export_student(args.checkpoint, args.output)
    print(f"wrote {n} student tensors to {args.output}")
    if args.check_config:
        check_loads(args.check_config, args.output)
        print(f"{args.output} loads strictly into {args.check_config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
