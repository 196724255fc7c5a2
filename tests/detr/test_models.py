"""Every DETR variant trains and predicts on CPU; the record holds what distillation needs."""
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer

from d2kd.detr import DecodedGroup, DETRRecord

VARIANTS = {
    "dino": ("dino", ()),
    "deformable": ("deformable_detr", ()),
    "deformable_refine_two_stage": (
        "deformable_detr", ("two_stage=True", "decoder.box_refine=True", "decoder.share_heads=False")
    ),
    # Deformable DETR's queries as published (learned positions, 2-d reference points)
    "deformable_paper": (
        "deformable_detr", ("query_type=paper", "decoder.point_anchors=True", "decoder.anchor_pos=False")
    ),
    "deformable_paper_refine_two_stage": (
        "deformable_detr", ("query_type=paper", "two_stage=True", "decoder.box_refine=True",
                            "decoder.share_heads=False", "decoder.anchor_pos=False")
    ),
    "dab": ("dab_detr", ()),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_train_and_eval(build_model, inputs, variant, event_storage, make_input):
    name, overrides = VARIANTS[variant]
    model = build_model(name, overrides).train()
    batch = inputs + [make_input(56, 56, 0, seed=3)]  # an image without objects
    losses = model(batch)
    assert all(k.startswith("loss_") and torch.isfinite(v) for k, v in losses.items())
    expected = {f"loss_{t}{s}" for t in ("class", "bbox", "giou") for s in ("", "_0")}
    if name == "dino" or "two_stage=True" in overrides:
        expected |= {f"loss_{t}_enc" for t in ("class", "bbox", "giou")}
    if name == "dino":
        expected |= {f"loss_{t}_dn{s}" for t in ("class", "bbox", "giou") for s in ("", "_0")}
    assert set(losses) == expected
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, no_grad
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    model.eval()
    with torch.no_grad():
        results = model(batch)
    assert len(results) == 3
    for r, x in zip(results, batch):
        inst = r["instances"]
        assert inst.image_size == (x["height"], x["width"])
        assert len(inst) > 0 and torch.isfinite(inst.pred_boxes.tensor).all()
        assert ((inst.scores >= 0) & (inst.scores <= 1)).all()


def test_batch_without_objects_keeps_loss_keys(build_model, event_storage, make_input):
    model = build_model("dino").train()
    batch = [make_input(48, 48, 0, seed=4), make_input(40, 56, 0, seed=5)]
    losses = model(batch)
    assert len(losses) == 15 and losses["loss_bbox_dn"].item() == 0
    sum(losses.values()).backward()
    assert model.denoising.label_embed.weight.grad is not None  # DDP-friendly: every parameter used


def test_record_fields(build_model, inputs):
    model = build_model("dino").train()
    images = model.preprocess_image(inputs)
    targets = model.prepare_targets(inputs)
    record = model.run(images, targets)
    assert isinstance(record, DETRRecord)
    D, B, N, K, C = 2, 2, 12, 3, 32
    out = record.outputs
    assert isinstance(out, DecodedGroup)
    assert out.logits.shape == (D, B, N, K) and out.boxes.shape == (D, B, N, 4)
    assert out.hidden.shape == (D, B, N, C) and out.references.shape == (D, B, N, 4)
    assert torch.allclose(out.references[0], record.queries.anchor_logits.sigmoid())
    # the second layer starts from the first layer's boxes (iterative refinement)
    assert torch.allclose(out.references[1], out.boxes[0])
    enc = record.enc
    assert len(enc.features) == 4 and enc.features[0].shape[:2] == (B, C)
    levels = enc.memory_levels()
    assert [tuple(m.shape[-2:]) for m in levels] == [tuple(f.shape[-2:]) for f in enc.features]
    assert enc.memory.shape == (B, sum(m[0, 0].numel() for m in levels), C)
    assert enc.padding_mask[1].sum() > enc.padding_mask[0].sum()  # image 1 is the smaller one
    assert record.queries.name == "det" and record.queries.content.shape == (B, N, C)
    p = record.proposals
    assert p.logits.shape == (B, N, K) and p.boxes.shape == (B, N, 4) and p.boxes.requires_grad
    assert p.all_logits.shape[1] == enc.memory.shape[1]
    assert set(record.groups) == {"dn"} and record.dn_meta["num_groups"] == 2
    assert record.matching is None
    losses = model.compute_losses(record, targets)
    assert [len(r) for r, _ in record.matching] == [3, 1]
    again = model.match(record, targets)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(again, record.matching))
    assert losses["loss_class"].requires_grad


def test_eval_run_has_no_denoising(build_model, inputs):
    model = build_model("dino").eval()
    images = model.preprocess_image(inputs)
    with torch.no_grad():
        record = model.run(images, model.prepare_targets(inputs))
    assert record.groups == {} and record.dn_meta is None


def test_denoising_layout(build_model, inputs):
    model = build_model("dino", ("denoising.label_noise_ratio=0.0",)).train()
    targets = model.prepare_targets(inputs)
    det_dummy = None
    group, meta = model.make_denoising_queries(targets, det_dummy)
    M, G = 3, 2
    assert meta["max_objects"] == M and group.anchor_logits.shape == (2, 2 * G * M, 4)
    assert meta["negative"].tolist() == ([False] * M + [True] * M) * G
    # positives within half a size of their object, negatives between 1 and 2 (per corner)
    boxes = group.anchor_logits.sigmoid()
    for b, (q, g) in enumerate(meta["indices"]):
        gt = targets[b]["boxes"][g]
        assert q.tolist() == [j + 2 * M * k for k in range(G) for j in range(len(targets[b]["labels"]))]
        assert torch.allclose(model.denoising.label_embed(targets[b]["labels"][g]), group.content[b, q])
        assert ((boxes[b, q, :2] - gt[:, :2]).abs() <= gt[:, 2:] / 2 + 1e-4).all()
    # image 1 has one object: its slots 1, 2 of every sub-group are padding
    assert group.content[1, 1:3].abs().sum() == 0
    assert group.internal_mask[0, 5] == False and group.internal_mask[0, 6] == True  # noqa: E712
    assert group.sees == ("det",)


@pytest.mark.parametrize("name", ["dino", "deformable_detr"])
def test_checkpoint_round_trip(build_model, inputs, tmp_path, name):
    model = build_model(name, seed=1).eval()
    DetectionCheckpointer(model, str(tmp_path)).save("model")
    other = build_model(name, seed=2).eval()
    DetectionCheckpointer(other).load(str(tmp_path / "model.pth"))
    with torch.no_grad():
        a, b = model(inputs), other(inputs)
    for ra, rb in zip(a, b):
        assert torch.equal(ra["instances"].pred_boxes.tensor, rb["instances"].pred_boxes.tensor)
        assert torch.equal(ra["instances"].scores, rb["instances"].scores)


def test_student_smaller_in_every_dimension(build_model, inputs, event_storage):
    """Depth, width, queries, levels and backbone are independent constructor arguments."""
    model = build_model("dino", (
        "embed_dim=16", "num_queries=7", "num_feature_levels=3", "decoder.num_layers=1",
        "encoder.num_layers=0", "backbone.bottom_up.stages.depth=34", "decoder.num_heads=2",
        "encoder.num_heads=2",
    )).train()
    images = model.preprocess_image(inputs)
    record = model.run(images, model.prepare_targets(inputs))
    assert record.outputs.hidden.shape == (1, 2, 7, 16) and len(record.enc.features) == 3
    losses = model(inputs)
    assert torch.isfinite(sum(losses.values()))


def test_inconsistent_sizes_are_reported(build_model):
    with pytest.raises(ValueError, match="decoder.embed_dim=64"):
        build_model("dino", ("decoder.embed_dim=64",))


def test_inference_rescales_to_original_size(build_model, make_input):
    model = build_model("dino", ("select_topk=2",)).eval()
    batch = [make_input(64, 80, 1, seed=1, scale=2.0)]
    images = model.preprocess_image(batch)
    with torch.no_grad():
        record = model.run(images)
    logits = torch.full_like(record.outputs.logits, -10.0)
    logits[-1, 0, 5, 2] = 3.0
    logits[-1, 0, 7, 0] = 2.0
    boxes = record.outputs.boxes.clone()
    boxes[-1, 0, 5] = torch.tensor([0.5, 0.5, 0.5, 0.25])
    record.outputs = DecodedGroup(logits, boxes, record.outputs.hidden, record.outputs.references)
    inst = model.inference(record, images, batch)[0]["instances"]
    assert inst.image_size == (128, 160) and inst.pred_classes.tolist() == [2, 0]
    assert torch.allclose(inst.scores[0], torch.tensor(3.0).sigmoid())
    # (0.25..0.75) x (0.375..0.625) of a 160 x 128 original
    assert torch.allclose(inst.pred_boxes.tensor[0], torch.tensor([40.0, 48.0, 120.0, 80.0]), atol=1e-4)


def test_raw_refinement_and_scaled_query_pos(build_model, inputs):
    """DINO's released code: the next reference from the layer output before the final norm (the
    prediction still uses the normed output); positional queries from boxes scaled to the padded
    maps. Both differ from d2kd's default DINO."""
    from d2kd.layers import inverse_sigmoid

    model = build_model("dino", ("decoder.raw_refinement=True", "decoder.scaled_query_pos=True")).eval()
    # not the zero init of the box delta, nor the identity affine of the final norm (whose input
    # already is a LayerNorm output), so that raw and normed outputs predict different boxes
    torch.nn.init.normal_(model.decoder.box_head(0).layers[-1].weight, std=0.1)
    torch.nn.init.normal_(model.decoder.norm.weight, mean=1.0, std=0.5)
    torch.nn.init.normal_(model.decoder.norm.bias, std=0.5)
    raw, seen = {}, []
    model.decoder.layers[0].register_forward_hook(lambda m, i, o: raw.setdefault("out", o))
    positional = model.decoder.positional_queries
    model.decoder.positional_queries = lambda boxes: seen.append(boxes) or positional(boxes)
    with torch.no_grad():
        record = model.run(model.preprocess_image(inputs))
        out = record.outputs
        head = model.decoder.box_head(0)
        following = (head(raw["out"]) + inverse_sigmoid(out.references[0])).sigmoid()
        assert torch.allclose(out.references[1], following, atol=1e-6)
        assert torch.allclose(out.boxes[0], (head(model.decoder.norm(raw["out"])) + record.queries.anchor_logits).sigmoid(),
                              atol=1e-6)
        assert not torch.allclose(out.references[1], out.boxes[0], atol=1e-4)
        ratios = record.enc.valid_ratios[:, 0].repeat(1, 2)[:, None]  # first level, (w, h, w, h)
        assert torch.allclose(seen[0], out.references[0] * ratios)
        assert (ratios < 1).any()  # the images are padded (to the batch size and size_divisibility)
