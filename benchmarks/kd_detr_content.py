"""Which content should KD-DETR's distillation queries carry on a DINO teacher?

    python benchmarks/kd_detr_content.py --weights output/builtin/dino_R50_builtin_1000it/model_final.pth

DAB-DETR's queries have zero content, DINO's a learned one (``query_content``), so a DINO teacher
never saw a zero-content query in training: its predictions at KD-DETR's points may be out of
distribution. This evaluates the trained teacher (configs/detr/dino_R50_builtin.py by default) on
d2kd_shapes_val three times, each time decoding its *own* detection anchors (its top-k encoder
proposals, i.e. KD-DETR's specific points) with a different content part:

    learned   its own learned content (the teacher as trained: the reference line)
    zero      zeros (KD-DETR's ``content="zero"``, the reference's choice)
    mean      the mean of its learned contents (``content="mean"``)

and prints the COCO AP of each. The closer a choice stays to "learned", the more the teacher's
targets at the points are the predictions of the model it actually is.
"""
import argparse
import os
import sys

os.environ.setdefault("MALLOC_MMAP_MAX_", "0")
os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "1000000000000")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTENTS = ("learned", "zero", "mean")


class ContentSwap:
    """Replaces the content of the model's detection queries while active."""

    def __init__(self, model, content: str):
        self.model, self.content = model, content
        self.original = model.make_detection_queries

    def __enter__(self):
        import dataclasses

        def make(enc):
            det, proposals = self.original(enc)
            if self.content == "zero":
                det = dataclasses.replace(det, content=torch.zeros_like(det.content))
            elif self.content == "mean":
                det = dataclasses.replace(det, content=det.content.mean(1, keepdim=True).expand_as(det.content))
            return det, proposals

        if self.content != "learned":
            self.model.make_detection_queries = make
        return self

    def __exit__(self, *exc):
        self.model.make_detection_queries = self.original
        return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/detr/dino_R50_builtin.py")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--max-images", type=int, default=0, help="evaluate on the first N val images (0: all)")
    args = parser.parse_args(argv)

    from detectron2.config import instantiate
    from detectron2.evaluation import inference_on_dataset

    from d2kd.engine.config import load_config, register_builtin_datasets
    from d2kd.engine.launch import configure_threads
    from d2kd.meta_arch import FrozenTeacher

    register_builtin_datasets()
    cfg = load_config(os.path.join(ROOT, args.config), [])
    configure_threads(0)
    teacher = FrozenTeacher(instantiate(cfg.model), args.weights)
    model = teacher.model
    results = {}
    for content in CONTENTS:
        loader = instantiate(cfg.dataloader.test)
        if args.max_images:
            import itertools

            loader = list(itertools.islice(loader, args.max_images))
        evaluator = instantiate(cfg.dataloader.evaluator)
        with ContentSwap(model, content), torch.no_grad():
            out = inference_on_dataset(model, loader, evaluator)
        results[content] = out["bbox"]
        print(f"content={content}: AP {out['bbox']['AP']:.1f}", flush=True)
    print("\n| content of the teacher's own queries | AP | AP50 | AP75 |\n|---|---|---|---|")
    for content, ap in results.items():
        print(f"| {content} | {ap['AP']:.1f} | {ap['AP50']:.1f} | {ap['AP75']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
