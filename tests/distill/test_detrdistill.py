"""DETRDistill: the three losses on hand-built inputs, stage grouping, and training steps."""
import glob
import math
import os
from types import SimpleNamespace

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances

import d2kd.distill.detrdistill as dd
from d2kd.detr import HungarianMatcher, SetCriterion
from d2kd.distill.detrdistill import (
    HungarianLogitsDistill,
    QueryPriorAssignmentDistill,
    TargetAwareFeatureDistill,
    quality_scores,
    query_masks,
    stage_groups,
    supervising_stages,
)
from d2kd.engine.smoke import run_smoke_step
from d2kd.meta_arch import DistillDETR, FrozenTeacher

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_CLASSES = 3


def _focal(logit: float, target: float, alpha=0.25, gamma=2.0) -> float:
    p = 1 / (1 + math.exp(-logit))
    p_t = p if target else 1 - p
    return (alpha if target else 1 - alpha) * (1 - p_t) ** gamma * -math.log(p_t)


def _criterion(num_classes=2):
    return SetCriterion(num_classes, HungarianMatcher())  # weights 1/5/2, matcher 2/5/2


# --------------------------------------------------------------------------- stage grouping
def test_stage_groups():
    assert stage_groups(6, 3) == [[0, 1], [2, 3], [4, 5]]
    assert stage_groups(6, 6) == [[i] for i in range(6)]
    assert stage_groups(4, 3) == [[0, 1], [2], [3]]
    assert stage_groups(3, 6) == [[0], [0], [1], [1], [2], [2]]
    assert supervising_stages(6, 3) == [1, 3, 5]
    assert supervising_stages(4, 3) == [1, 2, 3]
    assert supervising_stages(6, 6) == list(range(6))
    assert supervising_stages(6, 3, progressive=False) == [5, 5, 5]
    with pytest.raises(ValueError):
        stage_groups(0, 3)


def test_ld_forward_pairs_teacher_stages_with_student_stages(monkeypatch):
    D_T, D_S, B, M, N, K = 6, 3, 1, 4, 4, 2
    t_boxes = torch.rand(D_T, B, M, 4) * 0.5 + 0.25
    t_out = SimpleNamespace(logits=torch.randn(D_T, B, M, K), boxes=t_boxes)
    s_out = SimpleNamespace(logits=torch.randn(D_S, B, N, K), boxes=torch.rand(D_S, B, N, 4) * 0.5 + 0.25)
    step = SimpleNamespace(teacher=SimpleNamespace(record=SimpleNamespace(outputs=t_out)),
                           student=SimpleNamespace(record=SimpleNamespace(outputs=s_out),
                                                   model=SimpleNamespace(criterion=_criterion())))
    seen = {}
    ld = HungarianLogitsDistill()
    monkeypatch.setattr(ld, "compute", lambda tl, tb, sl, sb, c: seen.update(tb=tb) or {})
    ld(step)
    assert torch.equal(seen["tb"], t_boxes[[1, 3, 5]])


# --------------------------------------------------------------------------- LD by hand
# teacher: A (class 1, score sigmoid(2) = 0.88: positive), X (scores 0.05: negative)
A, X = [0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]
# student: s0 near X, s1 near A (each shifted by 0.02: L1 0.02, GIoU 9/11)
S0, S1 = [0.68, 0.7, 0.2, 0.2], [0.3, 0.32, 0.2, 0.2]
GIOU_LOSS = 2 * (1 - 0.036 / 0.044)


def _ld_inputs(teacher_boxes=(A, X), student_boxes=(S0, S1)):
    t_logits = torch.tensor([[[[-3.0, 2.0], [-3.0, -3.0]]]])
    t_boxes = torch.tensor([[list(teacher_boxes)]])
    s_logits = torch.tensor([[[[0.0, 0.0], [0.0, 1.0]]]], requires_grad=True)
    s_boxes = torch.tensor([[list(student_boxes)]], requires_grad=True)
    return t_logits, t_boxes, s_logits, s_boxes


def _bkl(logit: float, p: float) -> float:
    """KL(Bernoulli(p) || Bernoulli(sigmoid(logit)))."""
    s = 1 / (1 + math.exp(-logit))
    return p * math.log(p / s) + (1 - p) * math.log((1 - p) / (1 - s))


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_ld_values_by_hand():
    t_logits, t_boxes, s_logits, s_boxes = _ld_inputs()
    out = HungarianLogitsDistill().compute(t_logits, t_boxes, s_logits, s_boxes, _criterion())
    pairs = 2  # one positive (A - s1) and one negative (X - s0) pair in the stage: the normaliser
    # Eq. 2, soft target: s1's logits (0, 1) towards A's probabilities (sigmoid(-3), sigmoid(2))
    soft = _bkl(0.0, _sig(-3.0)) + _bkl(1.0, _sig(2.0))
    assert out["loss_kd_ld_pos_class"].item() == pytest.approx(soft / pairs, rel=1e-5)
    assert out["loss_kd_ld_pos_bbox"].item() == pytest.approx(5 * 0.02 / pairs, rel=1e-4)
    assert out["loss_kd_ld_pos_giou"].item() == pytest.approx(GIOU_LOSS / pairs, rel=1e-4)
    # Eq. 3: X matched to s0, box terms only
    assert out["loss_kd_ld_neg_bbox"].item() == pytest.approx(5 * 0.02 / pairs, rel=1e-4)
    assert out["loss_kd_ld_neg_giou"].item() == pytest.approx(GIOU_LOSS / pairs, rel=1e-4)
    assert set(out) == {"loss_kd_ld_pos_class", "loss_kd_ld_pos_bbox", "loss_kd_ld_pos_giou",
                        "loss_kd_ld_neg_bbox", "loss_kd_ld_neg_giou"}
    # hard target: focal towards the one-hot argmax (class 1)
    hard = HungarianLogitsDistill(class_target="hard").compute(t_logits, t_boxes, s_logits, s_boxes, _criterion())
    expected_hard = (_focal(0.0, 0) + _focal(1.0, 1)) / pairs
    assert hard["loss_kd_ld_pos_class"].item() == pytest.approx(expected_hard, rel=1e-5)
    ld2 = HungarianLogitsDistill(weight=2.0, class_weight=3.0).compute(t_logits, t_boxes, s_logits, s_boxes,
                                                                       _criterion())
    assert ld2["loss_kd_ld_pos_class"].item() == pytest.approx(6 * soft / pairs, rel=1e-5)
    with pytest.raises(ValueError, match="class_target"):
        HungarianLogitsDistill(class_target="onehot")


def test_ld_soft_class_gradient_points_to_the_teacher_probabilities():
    t_logits, t_boxes, s_logits, s_boxes = _ld_inputs()
    out = HungarianLogitsDistill(terms=("pos_class",)).compute(t_logits, t_boxes, s_logits, s_boxes, _criterion())
    out["loss_kd_ld_pos_class"].backward()
    # d KL / d x = sigmoid(x) - p on the matched student s1, divided by the one pair
    expected = torch.tensor([_sig(0.0) - _sig(-3.0), _sig(1.0) - _sig(2.0)])
    assert torch.allclose(s_logits.grad[0, 0, 1], expected, atol=1e-6)
    assert torch.count_nonzero(s_logits.grad[0, 0, 0]) == 0


def test_ld_threshold_splits_positives_and_negatives():
    t_logits, t_boxes, s_logits, s_boxes = _ld_inputs()
    # above sigmoid(2): A becomes a negative too; both students match a teacher negative
    out = HungarianLogitsDistill(score_threshold=0.95).compute(t_logits, t_boxes, s_logits, s_boxes, _criterion())
    for k in ("loss_kd_ld_pos_class", "loss_kd_ld_pos_bbox", "loss_kd_ld_pos_giou"):
        assert out[k].item() == 0.0
    assert out["loss_kd_ld_neg_bbox"].item() == pytest.approx(5 * 0.02, rel=1e-4)  # mean of two pairs
    # below sigmoid(-3): both are positives, no negatives left
    out = HungarianLogitsDistill(score_threshold=0.01).compute(t_logits, t_boxes, s_logits, s_boxes, _criterion())
    assert out["loss_kd_ld_neg_bbox"].item() == 0.0
    assert out["loss_kd_ld_pos_bbox"].item() == pytest.approx(5 * 0.02, rel=1e-4)


def test_ld_negative_terms_have_no_class_gradient():
    t_logits, t_boxes, s_logits, s_boxes = _ld_inputs()
    out = HungarianLogitsDistill().compute(t_logits, t_boxes, s_logits, s_boxes, _criterion())
    (out["loss_kd_ld_neg_bbox"] + out["loss_kd_ld_neg_giou"]).backward()
    assert torch.count_nonzero(s_logits.grad) == 0
    assert s_boxes.grad[0, 0, 0].abs().sum() > 0  # s0 (matched to X) moves
    assert s_boxes.grad[0, 0, 1].abs().sum() == 0  # s1 took the positive
    only_neg = HungarianLogitsDistill(terms=("neg_box",)).compute(t_logits, t_boxes, s_logits, s_boxes,
                                                                  _criterion())
    assert set(only_neg) == {"loss_kd_ld_neg_bbox", "loss_kd_ld_neg_giou"}
    # with negatives only, the normaliser counts the negative pair alone
    assert only_neg["loss_kd_ld_neg_bbox"].item() == pytest.approx(5 * 0.02, rel=1e-4)


def test_ld_negatives_skip_students_taken_by_positives():
    # a teacher duplicate of A (negative) right next to s1; s0 is far away
    dup = [0.3, 0.34, 0.2, 0.2]
    t_logits, t_boxes, s_logits, s_boxes = _ld_inputs(teacher_boxes=(A, dup), student_boxes=([0.7, 0.7, 0.2, 0.2], S1))
    crit = _criterion()
    excl = HungarianLogitsDistill().compute(t_logits, t_boxes, s_logits, s_boxes, crit)
    literal = HungarianLogitsDistill(exclude_positive_matches=False).compute(t_logits, t_boxes, s_logits, s_boxes,
                                                                             crit)
    assert excl["loss_kd_ld_neg_bbox"].item() == pytest.approx(5 * (0.4 + 0.36) / 2, rel=1e-4)  # s0 <-> dup
    assert literal["loss_kd_ld_neg_bbox"].item() == pytest.approx(5 * 0.02 / 2, rel=1e-4)  # s1 <-> dup


def test_ld_normalises_by_the_stage_pair_count_across_processes(monkeypatch):
    # two stages, two images: the pairs of a stage share one normaliser, stages are summed
    stage = torch.tensor([0, 0, 0, 1])
    assert dd.pair_normalizer(stage, 2, "cpu").tolist() == [3.0, 1.0]
    assert dd.pair_normalizer(stage[:0], 2, "cpu").tolist() == [1.0, 1.0]  # at least 1
    # with 2 processes the count is the mean of theirs (the other one has 5 and 1 pairs)
    monkeypatch.setattr(dd.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t: t.add_(torch.tensor([5.0, 1.0])))
    assert dd.pair_normalizer(stage, 2, "cpu").tolist() == [4.0, 1.0]


def test_ld_is_zero_when_the_student_is_the_teacher():
    g = torch.Generator().manual_seed(3)
    P, B, M, K = 2, 2, 12, 3
    t_logits = torch.randn(P, B, M, K, generator=g) * 2
    t_logits[:, :, :4, 0] = 3.0  # some positives in every problem
    t_boxes = torch.cat([torch.rand(P, B, M, 2, generator=g) * 0.6 + 0.2,
                         torch.rand(P, B, M, 2, generator=g) * 0.2 + 0.05], -1)
    out = HungarianLogitsDistill().compute(t_logits, t_boxes, t_logits.clone(), t_boxes.clone(), _criterion(K))
    assert set(out) == {"loss_kd_ld_pos_class", "loss_kd_ld_pos_bbox", "loss_kd_ld_pos_giou",
                        "loss_kd_ld_neg_bbox", "loss_kd_ld_neg_giou"}
    for k, v in out.items():
        assert abs(v.item()) < 1e-5, k
    # and not zero once the student moves away
    moved = HungarianLogitsDistill().compute(t_logits, t_boxes, t_logits + 1.0, t_boxes * 0.9, _criterion(K))
    assert all(v.item() > 1e-3 for v in moved.values())


def test_ld_many_teacher_queries_one_assignment_call_per_set(monkeypatch):
    calls = []
    real = dd.batched_linear_sum_assignment

    def spy(cost, num):
        calls.append(tuple(cost.shape))
        return real(cost, num)

    monkeypatch.setattr(dd, "batched_linear_sum_assignment", spy)
    g = torch.Generator().manual_seed(0)
    P, B, M, N, K = 3, 2, 900, 300, 4
    t_logits = torch.full((P, B, M, K), -4.0)
    t_logits[:, :, :10, 1] = 3.0  # 10 positives per image and stage
    t_boxes = torch.rand(P, B, M, 4, generator=g) * 0.5 + 0.25
    s_logits = torch.randn(P, B, N, K, generator=g, requires_grad=True)
    s_boxes = (torch.rand(P, B, N, 4, generator=g) * 0.5 + 0.25).requires_grad_()
    out = HungarianLogitsDistill().compute(t_logits, t_boxes, s_logits, s_boxes, _criterion(K))
    assert calls == [(P * B, N, 10), (P * B, N, M - 10)]
    assert all(torch.isfinite(v) for v in out.values())
    sum(out.values()).backward()
    assert s_boxes.grad.abs().sum(-1).gt(0).all()  # every student query got a teacher box
    # fewer teacher queries than student queries works too
    calls.clear()
    out = HungarianLogitsDistill().compute(t_logits[:, :, :100], t_boxes[:, :, :100], s_logits, s_boxes,
                                           _criterion(K))
    assert calls == [(P * B, N, 10), (P * B, N, 90)] and all(torch.isfinite(v) for v in out.values())


# --------------------------------------------------------------------------- FD by hand
def test_quality_score_by_hand():
    logits = torch.full((1, 3, 2), -5.0)
    logits[0, 1, 1] = 0.0  # c = 0.5 for the matched object's class
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2], [0.8, 0.8, 0.1, 0.1]]])
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.4]])}]  # IoU 0.5
    matching = [(torch.tensor([1]), torch.tensor([0]))]
    q = quality_scores(logits, boxes, matching, targets, gamma=0.5)
    assert q[0, 1].item() == pytest.approx(0.5 ** 0.5 * 0.5 ** 0.5, rel=1e-5)
    assert q[0, 0].item() == 0 and q[0, 2].item() == 0  # unmatched queries: q = 0
    assert quality_scores(logits, boxes, matching, targets, gamma=1.0)[0, 1].item() == pytest.approx(0.5)


def _fd_map():
    feat = torch.zeros(1, 2, 2, 2)  # d = 2, 2x2 map; cells as (channel 0, channel 1):
    feat[0, :, 0, 0] = torch.tensor([1.0, 0.0])  # (0, 0): cos with (1, 0) = 1
    feat[0, :, 0, 1] = torch.tensor([0.0, 1.0])  # (0, 1): 0
    feat[0, :, 1, 0] = torch.tensor([1.0, 1.0])  # (1, 0): 1 / sqrt(2)
    feat[0, :, 1, 1] = torch.tensor([-1.0, 0.0])  # (1, 1): -1, clamped to 0
    return feat


def test_query_mask_by_hand():
    feat, query = _fd_map(), torch.tensor([[[2.0, 0.0]]])
    valid = torch.ones(1, 2, 2, dtype=torch.bool)
    psi = query_masks(feat, query, valid)[0, 0]
    r = 1 / math.sqrt(2)
    assert torch.allclose(psi, torch.tensor([[1.0, 0.0], [r, 0.0]]))
    valid[0, 0, :] = False  # padding: zero there, the peak taken over valid cells only
    psi = query_masks(feat, query, valid)[0, 0]
    assert torch.allclose(psi, torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    # a query similar to no cell: zero everywhere (no division by zero)
    assert torch.equal(query_masks(feat, torch.tensor([[[0.0, -1.0]]]), valid), torch.zeros(1, 1, 2, 2))


def test_feature_loss_by_hand():
    target, pred = _fd_map(), torch.zeros(1, 2, 2, 2)  # |D|^2 = 1, 1, 2, 1
    queries, q = torch.tensor([[[2.0, 0.0], [0.0, -1.0]]]), torch.tensor([[0.5, 0.25]])
    valid = torch.ones(1, 2, 2, dtype=torch.bool)
    d, HW = 2, 4
    loss = TargetAwareFeatureDistill.level_loss(target, pred, queries, q, valid)
    # Eq. 8: query 1: psi^2 = 1 at (0, 0) and 1/2 at (1, 0): 1 * 1 + 0.5 * 2; query 2 has psi = 0
    assert loss.item() == pytest.approx((0.5 * 2.0 + 0.25 * 0.0) / ((0.5 + 0.25) * d * HW), rel=1e-5)
    valid[0, 0, :] = False  # padded row: its error and its cells are left out; (1, 0) is the peak
    loss = TargetAwareFeatureDistill.level_loss(target, pred, queries, q, valid)
    assert loss.item() == pytest.approx(0.5 * 2.0 / (0.75 * d * 2), rel=1e-5)
    # no matched query (q = 0): nothing, and no division by zero
    assert TargetAwareFeatureDistill.level_loss(target, pred, queries, q * 0, valid).item() == 0.0
    # the student equal to the teacher: zero
    assert TargetAwareFeatureDistill.level_loss(target, target.clone(), queries, q, valid).item() == 0.0


# --------------------------------------------------------------------------- tiny models
def _tiny_dino(width, queries, dec_layers, seed):
    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "common", "models", "dino.py"))
    LazyConfig.apply_overrides(cfg, [f"model.{o}" for o in (
        f"num_classes={NUM_CLASSES}", f"num_queries={queries}", f"embed_dim={width}",
        "backbone.bottom_up.stages.depth=18", "backbone.bottom_up.stages.norm=BN",
        "backbone.bottom_up.freeze_at=0", "encoder.num_layers=1", f"decoder.num_layers={dec_layers}",
        "encoder.ffn_dim=32", "decoder.ffn_dim=32", "denoising.num_queries=6")])
    torch.manual_seed(seed)
    return instantiate(cfg.model)


def _input(h, w, n, seed):
    g = torch.Generator().manual_seed(seed)
    inst = Instances((h, w))
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5])
    wh = 10 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
    inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], 1))
    inst.gt_classes = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    return {"image": image, "instances": inst, "height": h, "width": w}


@pytest.fixture
def inputs():
    return [_input(64, 80, 3, 1), _input(48, 64, 1, 2)]  # the second image is padded


def _distiller(losses):
    teacher = _tiny_dino(32, 20, 3, seed=1)  # 20 queries, 3 stages, width 32
    # A fresh DETR's box deltas start at zero, so all its stages predict the same boxes and
    # match alike; random heads make the stages differ, as a trained teacher's do.
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in (teacher.decoder.box_heads[0].layers[-1].weight, teacher.decoder.class_heads[0].weight):
            p.copy_(torch.randn(p.shape, generator=g))
    student = _tiny_dino(16, 12, 2, seed=2)  # 12 queries, 2 stages, width 16
    return DistillDETR(student=student, teacher=FrozenTeacher(teacher, allow_uninitialized=True), losses=losses)


def _all_three():
    return {
        "ld": HungarianLogitsDistill(),
        "fd": TargetAwareFeatureDistill(student_channels=16, teacher_channels=32, num_levels=4),
        "ad": QueryPriorAssignmentDistill(student_channels=16, teacher_channels=32),
    }


def _spy(monkeypatch, obj, name, sink):
    real = getattr(obj, name)

    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        sink.append((args, result))
        return result

    monkeypatch.setattr(obj, name, wrapper)


def _median_teacher_score(model, inputs, monkeypatch):
    """The median best-class probability of the random teacher at the stages LD reads."""
    seen = []
    _spy(monkeypatch, model.distill_losses["ld"], "compute", seen)
    model(inputs)
    monkeypatch.undo()
    t_logits = seen[0][0][0]
    return float(t_logits.sigmoid().amax(-1).median())


def test_training_step_distills_both_ld_sets_and_reaches_the_right_parameters(inputs, event_storage, monkeypatch):
    model = _distiller(_all_three()).train()
    ld = model.distill_losses["ld"]
    # the random teacher scores ~0.01: a threshold at its median makes half of it positive
    ld.score_threshold = _median_teacher_score(model, inputs, monkeypatch)
    pos, neg = [], []
    _spy(monkeypatch, ld, "_match_positives", pos)
    _spy(monkeypatch, ld, "_match_negatives", neg)
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    assert all(n.startswith(("student.", "distill_losses.")) for n, _ in model.named_parameters())
    losses = model(inputs)
    assert len(pos[0][1][0]) > 0 and len(neg[0][1][0]) > 0  # both LD sets have pairs
    kd = {k: v for k, v in losses.items() if k.startswith("loss_kd_")}
    assert set(kd) == {"loss_kd_ld_pos_class", "loss_kd_ld_pos_bbox", "loss_kd_ld_pos_giou", "loss_kd_ld_neg_bbox",
                       "loss_kd_ld_neg_giou", "loss_kd_fd", "loss_kd_ad_class", "loss_kd_ad_bbox",
                       "loss_kd_ad_giou"}
    assert all(v.item() > 0 for v in kd.values()), kd

    def grads(term_names):
        model.zero_grad(set_to_none=True)
        sum(losses[k] for k in term_names).backward(retain_graph=True)
        return {n: p.grad for n, p in model.named_parameters()}

    def touched(g, part):
        return any(v is not None and v.abs().sum() > 0 for n, v in g.items() if part in n)

    g = grads(["loss_kd_fd"])  # features: the adapters and the student's backbone, not its heads
    assert touched(g, "distill_losses.fd.adapters") and touched(g, "student.backbone")
    assert not touched(g, "class_heads") and not touched(g, "distill_losses.ad")
    g = grads(["loss_kd_ld_neg_bbox", "loss_kd_ld_neg_giou"])  # boxes only
    assert touched(g, "box_heads") and not touched(g, "class_heads")
    g = grads(["loss_kd_ld_pos_class"])
    assert touched(g, "class_heads") and not touched(g, "distill_losses")
    g = grads(["loss_kd_ad_class", "loss_kd_ad_bbox", "loss_kd_ad_giou"])
    assert touched(g, "distill_losses.ad.adapter") and not touched(g, "distill_losses.fd")
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k  # bit-identical, buffers included


def _teacher_matches_per_stage(step):
    out = step.teacher.record.outputs
    matcher = step.teacher.model.criterion.matcher
    return [matcher(out.logits[k], out.boxes[k], step.targets) for k in range(out.logits.shape[0])]


def _same_matching(a, b):
    return all(torch.equal(qa, qb) and torch.equal(ga, gb) for (qa, ga), (qb, gb) in zip(a, b))


def test_feature_distillation_forward_equals_brute_force_eq8(inputs, event_storage, monkeypatch):
    fd = TargetAwareFeatureDistill(student_channels=16, teacher_channels=32, num_levels=4, weight=3.0)
    model = _distiller({"fd": fd}).train()
    steps = []
    _spy(monkeypatch, fd, "forward", steps)
    losses = model(inputs)
    step = steps[0][0][0]
    out, targets = step.teacher.record.outputs, step.targets
    matches = _teacher_matches_per_stage(step)
    assert not all(_same_matching(m, matches[-1]) for m in matches)  # stages differ: the test can tell
    pads = step.teacher.record.enc.level_padding_masks()
    total, terms = 0.0, 0
    with torch.no_grad():
        for k, match in enumerate(matches):  # every teacher stage with its own queries and match
            for lvl, adapter in enumerate(fd.adapters):  # teacher and student levels pair 1:1 here
                target = step.teacher.features[lvl].double()
                pred = adapter(step.student.features[lvl]).double()
                for b, (qi, gi) in enumerate(match):
                    valid = ~pads[lvl][b]
                    d, cells = target.shape[1], int(valid.sum())
                    num, z = 0.0, 0.0
                    for i, g in zip(qi.tolist(), gi.tolist()):
                        label = int(targets[b]["labels"][g])
                        c = torch.sigmoid(out.logits[k, b, i, label].double())
                        iou = box_iou_single(out.boxes[k, b, i].double(), targets[b]["boxes"][g].double())
                        q = float(c.sqrt() * iou.sqrt())  # Eq. 7, gamma = 0.5
                        Q = out.hidden[k, b, i].double()
                        cos = (target[b] * Q[:, None, None]).sum(0) / (target[b].norm(dim=0) * Q.norm())
                        cos = torch.where(valid, cos, torch.zeros_like(cos)).clamp(min=0)
                        psi = cos / cos.max() if cos.max() > 0 else cos
                        err = ((target[b] - pred[b]) ** 2).sum(0) * valid
                        num += q * float((psi ** 2 * err).sum())
                        z += q
                    total += num / (z * d * cells) if z > 0 else 0.0
                terms += 1
    expected = 3.0 * total / len(inputs) / terms
    assert losses["loss_kd_fd"].item() == pytest.approx(expected, rel=1e-4)


def box_iou_single(a, b):
    """IoU of two cxcywh boxes."""
    a = torch.cat([a[:2] - a[2:] / 2, a[:2] + a[2:] / 2])
    b = torch.cat([b[:2] - b[2:] / 2, b[:2] + b[2:] / 2])
    wh = (torch.minimum(a[2:], b[2:]) - torch.maximum(a[:2], b[:2])).clamp(min=0)
    inter = wh[0] * wh[1]
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def test_assignment_distillation_uses_the_teachers_stage_matching(inputs, event_storage, monkeypatch):
    ad = QueryPriorAssignmentDistill(student_channels=16, teacher_channels=32)
    model = _distiller({"ad": ad}).train()
    steps = []
    _spy(monkeypatch, ad, "forward", steps)
    losses = model(inputs)
    step = steps[0][0][0]
    group = step.student.record.groups[ad.group_name]
    assert group.logits.shape[:3] == (2, 2, 20)  # every student stage, the teacher's 20 queries
    matches = _teacher_matches_per_stage(step)  # 3 teacher stages; student stages 0, 1 <- 1, 2
    assert supervising_stages(3, 2) == [1, 2]
    assert not _same_matching(matches[1], matches[2])  # so the last stage alone would differ
    # Eq. 9 by hand: focal over all group queries, L1 / GIoU over the assigned ones, / #objects
    crit = model.student.criterion
    w, n_obj = crit.weight_dict, sum(len(t["labels"]) for t in step.targets)
    expected = {"class": 0.0, "bbox": 0.0, "giou": 0.0}
    with torch.no_grad():
        for s, t in enumerate([1, 2]):
            for b, (qi, gi) in enumerate(matches[t]):
                target = torch.zeros(20, NUM_CLASSES, dtype=torch.float64)
                target[qi, step.targets[b]["labels"][gi]] = 1.0
                logits = group.logits[s, b].double()
                p = logits.sigmoid()
                p_t = torch.where(target > 0, p, 1 - p)
                alpha = torch.where(target > 0, 0.25, 0.75)
                expected["class"] += float((alpha * (1 - p_t) ** 2 * -p_t.log()).sum())
                for i, g in zip(qi.tolist(), gi.tolist()):
                    pb, gb = group.boxes[s, b, i].double(), step.targets[b]["boxes"][g].double()
                    expected["bbox"] += float((pb - gb).abs().sum())
                    expected["giou"] += 1 - float(giou_single(pb, gb))
    for key, name in (("class", "loss_class"), ("bbox", "loss_bbox"), ("giou", "loss_giou")):
        assert losses[f"loss_kd_ad_{key}"].item() == pytest.approx(w[name] * expected[key] / n_obj, rel=1e-4), key
    # the group carries the teacher's anchors and (adapted) content
    assert torch.allclose(group.references[0], step.teacher.record.queries.anchor_logits.sigmoid())


def giou_single(a, b):
    """GIoU of two cxcywh boxes."""
    iou = box_iou_single(a, b)
    a = torch.cat([a[:2] - a[2:] / 2, a[:2] + a[2:] / 2])
    b = torch.cat([b[:2] - b[2:] / 2, b[:2] + b[2:] / 2])
    inter_wh = (torch.minimum(a[2:], b[2:]) - torch.maximum(a[:2], b[:2])).clamp(min=0)
    inter = inter_wh[0] * inter_wh[1]
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (torch.maximum(a[2:], b[2:]) - torch.minimum(a[:2], b[:2])).prod()
    return iou - (hull - union) / hull


def test_assignment_group_is_isolated_and_training_only(inputs, event_storage, monkeypatch):
    plain_model = _distiller({}).train()
    ad = QueryPriorAssignmentDistill(student_channels=16, teacher_channels=32)
    model = _distiller({"ad": ad}).train()
    torch.manual_seed(5)  # the same denoising noise in both runs
    plain = plain_model(inputs)
    torch.manual_seed(5)
    with_ad = model(inputs)
    for k, v in plain.items():  # the student's own losses do not see the extra group
        assert torch.allclose(v, with_ad[k], atol=1e-5), k
    called = []
    monkeypatch.setattr(ad, "student_groups", lambda *a: called.append(1) or [])
    model.eval()
    with torch.no_grad():
        out = model(inputs)
    assert len(out) == 2 and not called


# --------------------------------------------------------------------------- configs
def _builtin_configs():
    rels = []
    for folder in ("detrdistill", "fitnet", "combined"):
        rels += sorted(glob.glob(os.path.join(ROOT, "configs", folder, "*_builtin.py")))
    return [os.path.relpath(p, os.path.join(ROOT, "configs")) for p in rels]


@pytest.mark.parametrize("rel", _builtin_configs())
def test_builtin_config_one_step(rel):
    cfg = LazyConfig.load(os.path.join(ROOT, "configs", rel))
    assert cfg.model.teacher.weights.startswith("output/")  # a trained teacher by default
    result = run_smoke_step(cfg)  # uninitialised teacher
    kd = [k for k in result["losses"] if k.startswith("loss_kd_")]
    assert kd and all(math.isfinite(result["losses"][k]) for k in kd)
    assert result["changed"] > 0
