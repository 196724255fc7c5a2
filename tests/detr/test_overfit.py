"""A tiny DINO learns: it overfits a handful of built-in images within a couple of CPU minutes."""
import copy

import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.evaluation import COCOEvaluator

NUM_IMAGES = 4
STEPS = 200
SUBSET = "d2kd_shapes_tiny_train_first4"


@pytest.mark.slow
def test_tiny_dino_overfits_a_few_builtin_images(tmp_path, event_storage, build_model):
    import d2kd.data  # noqa: F401  (registers the built-in data sets)

    dicts = DatasetCatalog.get("d2kd_shapes_tiny_train")[:NUM_IMAGES]
    assert sum(len(d["annotations"]) for d in dicts) >= 10
    DatasetCatalog.register(SUBSET, lambda: dicts)
    MetadataCatalog.get(SUBSET).set(thing_classes=MetadataCatalog.get("d2kd_shapes_tiny_train").thing_classes)
    try:
        mapper = DatasetMapper(is_train=True, augmentations=[], image_format="RGB")
        batch = [mapper(copy.deepcopy(d)) for d in dicts]
        model = build_model("dino", (
            "num_classes=12", "embed_dim=64", "num_queries=50", "denoising.num_queries=30",
            "encoder.ffn_dim=128", "decoder.ffn_dim=128", "select_topk=100",
        ))
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
        model.train()
        for _ in range(STEPS):
            losses = model(batch)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            optimizer.step()

        model.eval()
        evaluator = COCOEvaluator(SUBSET, output_dir=str(tmp_path), use_fast_impl=False)
        evaluator.reset()
        inputs = [{k: v for k, v in x.items() if k != "instances"} for x in batch]
        with torch.no_grad():
            evaluator.process(inputs, model(inputs))
        ap = evaluator.evaluate()["bbox"]["AP"]
    finally:
        DatasetCatalog.remove(SUBSET)
        MetadataCatalog.remove(SUBSET)
    assert ap > 80.0, f"box AP after {STEPS} steps on {NUM_IMAGES} training images: {ap:.1f}"
