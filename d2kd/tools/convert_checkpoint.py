"""Converts a Hugging Face transformers detector folder into a d2kd checkpoint.

    python -m d2kd.tools.convert_checkpoint path/to/hf_folder teacher.pth [--dataset coco_2017_train]
    python -m d2kd.tools.convert_checkpoint checkpoint0011_4scale.pth teacher.pth --num-classes 80

A release file (IDEA-Research/DINO, detrex's DINO, detrex's Deformable DETR) is converted by
:mod:`d2kd.convert.releases`. The folder is read as it lies on disk (``config.json`` + ``model.safetensors`` or
``pytorch_model.bin``); nothing is downloaded. The output is ``{"model": state_dict,
"d2kd_config": {...}}``, written atomically; the d2kd config values are printed as overrides,
for a detector config (``model.``) and for the teacher of a distillation config
(``model.teacher.model.``). The d2kd model is built from them and the weights are loaded
strictly before anything is written.

``--dataset`` keeps the classes of a registered detectron2 data set, matched by name with the
checkpoint's ``id2label`` and in the data set's order (e.g. transformers' COCO detectors have 91
labels with "N/A" gaps; d2kd's COCO data sets have 80 contiguous classes).
"""
import argparse
import os
import sys

import torch

from d2kd.convert import ConversionError, Converted, build_model_config, convert_hf_folder, overrides
from d2kd.convert.releases import convert_any_release
from d2kd.engine.checkpoint import _atomic_write


def dataset_classes(name: str):
    """The ``thing_classes`` of a registered data set (d2kd's built-in ones are registered here)."""
    import d2kd.data  # noqa: F401  registers d2kd's data sets
    from detectron2.data import MetadataCatalog

    classes = MetadataCatalog.get(name).get("thing_classes")
    if not classes:
        raise ConversionError(f"data set {name!r} is not registered or has no thing_classes")
    return list(classes)


def read_release(path: str, num_classes=None) -> Converted:
    """A release checkpoint file (DINO: IDEA-Research or detrex; detrex Deformable DETR) as a
    :class:`Converted`."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated, not a checkpoint at all, ...
        raise ConversionError(f"cannot read checkpoint {path!r} (truncated or not a checkpoint?): {e}") from e
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise ConversionError(f"checkpoint {path!r} holds no state dict")
    out, values, model_config = convert_any_release(state, num_classes)
    return Converted(out, values, model_config)


def convert(folder: str, output: str, dataset: str = "", num_classes=None):
    """Converts ``folder`` (a Hugging Face folder or a release file) to ``output``; returns
    the :class:`~d2kd.convert.Converted`."""
    from detectron2.config import instantiate

    if os.path.isfile(folder):
        converted = read_release(folder, num_classes)
    else:
        converted = convert_hf_folder(folder, dataset_classes(dataset) if dataset else None)
    model = instantiate(build_model_config(converted))
    model.load_state_dict(converted.state, strict=True)
    payload = {
        "model": converted.state,
        "d2kd_config": {"model_config": f"configs/common/models/{converted.model_config}.py",
                        "values": converted.values, "classes": converted.classes, "source": folder},
    }
    _atomic_write(output, lambda f: torch.save(payload, f))
    return converted


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="Hugging Face model folder (config.json + weights), or a release "
                                       "checkpoint file (DINO: IDEA-Research or detrex; detrex Deformable DETR)")
    parser.add_argument("output", help="d2kd checkpoint to write (.pth)")
    parser.add_argument("--dataset", default="", help="keep the classes of this registered data set, by name")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="DINO releases: 80 turns a 91-row (COCO id) head into detectron2's 80 COCO classes")
    args = parser.parse_args(argv)
    try:
        converted = convert(args.folder, args.output, args.dataset, args.num_classes)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {len(converted.state)} tensors, {converted.values['num_classes']} classes")
    print(f"d2kd model config: configs/common/models/{converted.model_config}.py with")
    print("  as a detector:  " + " ".join(overrides(converted.values)))
    print("  as a teacher:   " + " ".join(overrides(converted.values, "model.teacher.model.")))
    print("input: RGB, ImageNet mean/std (set model.teacher.flip_channels=True if the student's loader gives BGR)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
