"""Query groups decoded in one pass stay isolated: the self-attention mask is the only thing
that couples them, and it lets through exactly what ``sees`` allows."""
import dataclasses

import pytest
import torch

from d2kd.detr import QueryGroup, group_attention_mask

ATOL = 1e-5


def _prepare(model, inputs):
    images = model.preprocess_image(inputs)
    targets = model.prepare_targets(inputs)
    enc = model.encode(images)
    det, _ = model.make_detection_queries(enc)
    return images, targets, enc, det


def _same(a, b):
    return all(torch.allclose(x, y, atol=ATOL) for x, y in
               ((a.logits, b.logits), (a.boxes, b.boxes), (a.hidden, b.hidden), (a.references, b.references)))


def _perturbed(group, rows=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(group.content.shape, generator=g)
    if rows is not None:
        keep = torch.ones(group.content.shape[1], dtype=torch.bool)
        keep[rows] = False
        noise[:, keep] = 0
    return dataclasses.replace(group, content=group.content + noise,
                               anchor_logits=group.anchor_logits + 0.5 * noise[..., :4])


def _extra_group(det, n=5, name="kd", sees=()):
    B, _, C = det.content.shape
    g = torch.Generator().manual_seed(7)
    return QueryGroup(name, torch.randn(B, n, C, generator=g), torch.randn(B, n, 4, generator=g), sees=sees)


def test_mask_layout():
    def group(name, n, **kw):
        return QueryGroup(name, torch.zeros(1, n, 2), torch.zeros(1, n, 4), **kw)

    inner = torch.ones(3, 3, dtype=torch.bool)
    mask = group_attention_mask([group("det", 2), group("dn", 3, internal_mask=inner, sees=("det",)), group("kd", 1)])
    allowed = ~mask
    assert allowed[:2, :2].all() and not allowed[:2, 2:].any()  # det sees only itself
    assert allowed[2:5, :2].all()  # dn sees det
    assert torch.equal(allowed[2:5, 2:5], torch.eye(3, dtype=torch.bool))  # internal mask, self kept
    assert not allowed[2:5, 5:].any() and not allowed[5, :5].any() and allowed[5, 5]
    assert group_attention_mask([group("det", 2)]) is None
    with pytest.raises(ValueError, match="unique"):
        group_attention_mask([group("a", 1), group("a", 1)])
    with pytest.raises(ValueError, match="unknown"):
        group_attention_mask([group("a", 1, sees=("b",))])


def test_denoising_mask_stops_leakage(build_model, inputs):
    model = build_model("dino").train()
    with torch.no_grad():
        _, targets, enc, det = _prepare(model, inputs)
        dn, meta = model.make_denoising_queries(targets, det)
        assert meta["num_groups"] == 2 and len(dn) == 2 * 2 * 3  # 6 // 3 objects, pos + neg
        base = model.decode(enc, [det, dn])
        alone = model.decode(enc, [det])
        assert _same(base["det"], alone["det"])
        # changing the denoising queries changes no detection output ...
        moved = model.decode(enc, [det, _perturbed(dn)])
        assert _same(moved["det"], base["det"])
        assert not torch.allclose(moved["dn"].hidden, base["dn"].hidden, atol=ATOL)
        # ... nor the other denoising groups (group 0 = queries 0..5)
        moved = model.decode(enc, [det, _perturbed(dn, rows=list(range(6)))])
        assert torch.allclose(moved["dn"].hidden[:, :, 6:], base["dn"].hidden[:, :, 6:], atol=ATOL)
        assert not torch.allclose(moved["dn"].hidden[:, :, :6], base["dn"].hidden[:, :, :6], atol=ATOL)
        # while the denoising queries do see the detection queries (DN-DETR)
        moved = model.decode(enc, [_perturbed(det, rows=[0]), dn])
        assert not torch.allclose(moved["dn"].hidden, base["dn"].hidden, atol=ATOL)


PAPER_TWO_STAGE = ("query_type=paper", "two_stage=True", "decoder.box_refine=True", "decoder.share_heads=False",
                   "decoder.anchor_pos=False")


@pytest.mark.parametrize("name, overrides", [("dino", ()), ("deformable_detr", ()), ("dab_detr", ()),
                                             ("deformable_detr", PAPER_TWO_STAGE)],
                         ids=["dino", "deformable_detr", "dab_detr", "deformable_detr_paper_two_stage"])
def test_extra_group_is_isolated_and_decodes_as_alone(build_model, inputs, name, overrides):
    model = build_model(name, overrides).eval()
    with torch.no_grad():
        _, _, enc, det = _prepare(model, inputs)
        extra = _extra_group(det)
        alone_det = model.decode(enc, [det])["det"]
        alone_extra = model.decode(enc, [extra])["kd"]
        joint = model.decode(enc, [det, extra])
        assert _same(joint["det"], alone_det)
        assert _same(joint["kd"], alone_extra)
        moved = model.decode(enc, [det, _perturbed(extra)])
        assert _same(moved["det"], alone_det)
        # a group that sees the detection queries depends on them, and they still do not see it
        seeing = dataclasses.replace(extra, name="kd2", sees=("det",))
        joint = model.decode(enc, [det, seeing])
        assert _same(joint["det"], alone_det)
        assert not torch.allclose(joint["kd2"].hidden, alone_extra.hidden, atol=ATOL)


def test_run_with_extra_groups(build_model, inputs):
    model = build_model("dino").eval()
    images = model.preprocess_image(inputs)
    calls = []

    def extra(enc, det):
        calls.append((enc, det))
        return [_extra_group(det, n=4)]

    with torch.no_grad():
        plain = model.run(images)
        record = model.run(images, extra_groups=extra)
    assert len(calls) == 1 and calls[0][1] is record.queries
    assert set(record.groups) == {"kd"} and record.groups["kd"].logits.shape[:3] == (2, 2, 4)
    assert _same(record.outputs, plain.outputs)


def test_independent_sets_follow_sees():
    from d2kd.detr.queries import independent_sets

    def group(name, sees=()):
        return QueryGroup(name, torch.zeros(1, 1, 2), torch.zeros(1, 1, 4), sees=sees)

    groups = [group("det"), group("kd_a"), group("dn", sees=("det",)), group("kd_b"), group("x", sees=("kd_b",))]
    assert independent_sets(groups) == [[0, 2], [1], [3, 4]]
    with pytest.raises(ValueError, match="unique"):
        independent_sets([group("a"), group("a")])
    with pytest.raises(ValueError, match="unknown"):
        independent_sets([group("a", sees=("b",))])


def test_separate_passes_equal_one_masked_pass(build_model, inputs):
    """decode() runs one pass per independent set; the outputs are those of a single masked
    pass over every group (the old behaviour), denoising included."""
    model = build_model("dino")
    model.train()
    images, targets, enc, det = _prepare(model, inputs)
    dn, _ = model.make_denoising_queries(targets, det)
    groups = [det, dn, _extra_group(det, 5, "kd_a"), _extra_group(det, 7, "kd_b")]
    model.eval()  # dropout off: both paths must be deterministic
    with torch.no_grad():
        separate = model.decode(enc, groups)
        together = model._decode_together(enc, groups)
    assert list(separate) == [g.name for g in groups]
    for name in separate:
        assert _same(separate[name], together[name]), name


def test_paper_one_stage_needs_positions(build_model, inputs):
    """Deformable DETR's published one-stage queries have learned positions no anchor determines:
    a group without its own positions is an error, one with them decodes (and stays isolated)."""
    model = build_model("deformable_detr", ("query_type=paper", "decoder.point_anchors=True",
                                            "decoder.anchor_pos=False")).eval()
    with torch.no_grad():
        _, _, enc, det = _prepare(model, inputs)
        with pytest.raises(ValueError, match="must give QueryGroup.position"):
            model.decode(enc, [det, _extra_group(det)])
        extra = _extra_group(det)
        extra = dataclasses.replace(extra, position=torch.randn(*extra.content.shape))
        joint = model.decode(enc, [det, extra])
        assert _same(joint["det"], model.decode(enc, [det])["det"])
