"""Pretrains the built-in backbones (the built-in data's ImageNet weights).

    python -m d2kd.tools.pretrain_backbone --depth 18          # -> $D2KD_WEIGHTS/BuiltinPretrained/R-18.pth
    python -m d2kd.tools.pretrain_backbone --depth 18 50       # both
    python -m d2kd.tools.pretrain_backbone --depth 50 --force  # retrain even if a good file exists

Trains a detectron2 ResNet (BatchNorm) to classify object crops of the shapes generator's
pretrain split (12 classes and background, see d2kd.data.crops), and writes its weights with a
manifest (sha256, tool and generator versions, data spec, recipe, held-out accuracy). A file that
verifies against the same recipe is reused, so a second run takes a second. The built-in configs
load these files as ``train.init_checkpoint``, the way the COCO configs load ImageNet weights.
"""
import argparse
import dataclasses
import sys

import torch


def main(argv=None) -> int:
    from d2kd.data import DEFAULT_SPEC
    from d2kd.engine.backbone_pretrain import default_recipe, ensure_backbone

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, nargs="+", default=[18, 50], choices=[18, 34, 50, 101])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="weights file (one --depth only; default "
                        "$D2KD_WEIGHTS/BuiltinPretrained/R-<depth>.pth)")
    parser.add_argument("--force", action="store_true", help="retrain even if a verified file exists")
    parser.add_argument("--num-threads", type=int, default=0, help="torch threads (0: all cores)")
    args = parser.parse_args(argv)
    if args.output and len(args.depth) > 1:
        parser.error("--output needs exactly one --depth")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    for depth in args.depth:
        recipe = dataclasses.replace(default_recipe(depth), seed=args.seed)
        if args.steps is not None:
            recipe = dataclasses.replace(recipe, steps=args.steps)
        path = ensure_backbone(recipe, DEFAULT_SPEC, path=args.output, force=args.force,
                               log=lambda m: print(m, flush=True))
        print(path, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
