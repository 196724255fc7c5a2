"""Exports the student of a distillation checkpoint as a plain detector checkpoint.

    python -m d2kd.tools.export_student output/kd/model_final.pth output/kd/student.pth \
        [--check-config configs/detr/dino_R18_builtin.py]

The result is ``{"model": student_state_dict}``, loadable by detectron2's DetectionCheckpointer
into the plain student config (``train.init_checkpoint=student.pth`` or ``--eval-only``) with no
d2kd distillation code involved. With ``--check-config`` the student config is built and the
weights are loaded strictly before anything is written, so a mismatch is reported here (one line,
exit status 2, no output file) rather than at evaluation time.
"""
import argparse
import os
import sys
from typing import Dict, Optional

import torch

from d2kd.engine.checkpoint import _atomic_write
from d2kd.engine.errors import D2KDUserError, one_line
from d2kd.meta_arch.base import student_weights


class ExportError(D2KDUserError, ValueError):
    """The checkpoint to export is missing, unreadable or holds no student."""


class StudentCheckpointError(ExportError):
    """The exported student weights do not load into the plain student config."""


def export_student(src: str, dst: str, check_config: Optional[str] = None) -> int:
    """Writes the student weights of checkpoint ``src`` to ``dst`` atomically; returns #tensors.

    With ``check_config`` the weights are first loaded strictly into the model of that config
    (:func:`check_state`); on any failure nothing is written.
    """
    if not os.path.isfile(src):
        raise ExportError(f"checkpoint not found: {src!r}")
    try:
        data = torch.load(src, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ExportError(f"cannot read checkpoint {src!r}: {type(e).__name__}: {e}") from e
    state = data["model"] if isinstance(data, dict) and "model" in data else data
    try:
        weights = student_weights(state)
    except ValueError as e:
        raise ExportError(f"{src!r}: {e}") from e
    if check_config:
        check_state(check_config, weights, f"the student of {src!r}")
    out = {"model": weights, "__exported_from__": os.path.abspath(src)}
    _atomic_write(dst, lambda f: torch.save(out, f))
    return len(weights)


def check_state(config_file: str, state: Dict[str, torch.Tensor], source: str) -> None:
    """Builds the plain student from ``config_file`` and loads ``state`` strictly; raises
    :class:`StudentCheckpointError` (or :class:`ExportError` for the config) naming the culprit."""
    from detectron2.config import LazyConfig, instantiate

    from d2kd.meta_arch.teacher import TeacherCheckpointError, check_state_dict_fits

    if not os.path.isfile(config_file):
        raise ExportError(f"--check-config: config file not found: {config_file!r}")
    model = instantiate(LazyConfig.load(config_file).model)
    try:
        check_state_dict_fits(state, model, source, what="student")
    except TeacherCheckpointError as e:  # the shared check names its error after the teacher
        raise StudentCheckpointError(f"{e} ({config_file})") from None
    model.load_state_dict(state, strict=True)


def check_loads(config_file: str, weights_file: str) -> None:
    """Builds the plain student from ``config_file`` and loads ``weights_file`` strictly."""
    state = torch.load(weights_file, map_location="cpu", weights_only=False)["model"]
    check_state(config_file, state, weights_file)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a distillation run's checkpoint (model_final.pth)")
    parser.add_argument("output", help="where to write the student checkpoint")
    parser.add_argument("--check-config", help="plain student config to load the result into")
    args = parser.parse_args(argv)
    try:
        n = export_student(args.checkpoint, args.output, check_config=args.check_config)
    except D2KDUserError as e:
        print(f"export_student: error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"wrote {n} student tensors to {args.output}")
    if args.check_config:
        print(f"{args.output} loads strictly into {args.check_config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
