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


def _ld_inputs(teacher_boxes=(A, X), student_boxes=(S0, S1)):
    t_logits = torch.tensor([[[[-3.0, 2.0], [-3.0, -3.0]]]])
    t_boxes = torch.tensor([[list(teacher_boxes)]])
    s_logits = torch.tensor([[[[0.0, 0.0], [0.0, 1.0]]]], requires_grad=True)
    s_boxes = torch.tensor([[list(student_boxes)]], requires_grad=True)
    return t_logits, t_boxes, s_logits, s_boxes


def test_ld_values_by_hand():
    t_logits, t_boxes, s_logits, s_boxes = _ld_inputs()
    out = HungarianLogitsDistill().compute(t_logits, t_boxes, s_logits, s_boxes, _criterion())
    # Eq. 2: A matched to s1; focal towards A's class (1) on s1's logits (0, 1), weight 1
    expected_class = _focal(0.0, 0) + _focal(1.0, 1)
    giou_loss = 2 * (1 - 0.036 / 0.044)
    assert out["loss_kd_ld_pos_class"].item() == pytest.approx(expected_class, rel=1e-5)
    assert out["loss_kd_ld_pos_bbox"].item() == pytest.approx(5 * 0.02, rel=1e-4)
    assert out["loss_kd_ld_pos_giou"].item() == pytest.approx(giou_loss, rel=1e-4)
    # Eq. 3: X matched to s0, box terms only
    assert out["loss_kd_ld_neg_bbox"].item() == pytest.approx(5 * 0.02, rel=1e-4)
    assert out["loss_kd_ld_neg_giou"].item() == pytest.approx(giou_loss, rel=1e-4)
    assert set(out) == {"loss_kd_ld_pos_class", "loss_kd_ld_pos_bbox", "loss_kd_ld_pos_giou",
                        "loss_kd_ld_neg_bbox", "loss_kd_ld_neg_giou"}
    ld2 = HungarianLogitsDistill(weight=2.0).compute(t_logits, t_boxes, s_logits, s_boxes, _criterion())
    assert ld2["loss_kd_ld_pos_class"].item() == pytest.approx(2 * expected_class, rel=1e-5)


def test_ld_threshold_splits_positives_and_negatives():
    t_logits, t_boxes, s_logits, s_boxes = _ld_inputs()
    # above sigmoid(2): A becomes a negative too; both students match a teacher negative
    out = HungarianLogitsDistill(score_threshold=0.95).compute(t_logits, t_boxes, s_logits, s_boxes, _criterion())
    for k in ("loss_kd_ld_pos_class", "loss_kd_ld_pos_bbox", "loss_kd_ld_pos_giou"):
        assert out[k].item() == 0.0
    assert out["loss_kd_ld_neg_bbox"].item() == pytest.approx(5 * 0.02, rel=1e-4)  # mean of two pairs
    # below sigmoid(-3): both are positives, no negatives left
    out = HungarianLogitsDistill(score_threshold=0.01).compute(t_logits, t_boxes, s_logits, s_boxes, _criterion())
    assert out["loss_kd_ld_neg_bbox"].item() == 0.0 and out["loss_kd_ld_pos_bbox"].item() > 0


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


def test_ld_negatives_skip_students_taken_by_positives():
    # a teacher duplicate of A (negative) right next to s1; s0 is far away
    dup = [0.3, 0.34, 0.2, 0.2]
    t_logits, t_boxes, s_logits, s_boxes = _ld_inputs(teacher_boxes=(A, dup), student_boxes=([0.7, 0.7, 0.2, 0.2], S1))
    crit = _criterion()
    excl = HungarianLogitsDistill().compute(t_logits, t_boxes, s_logits, s_boxes, crit)
    literal = HungarianLogitsDistill(exclude_positive_matches=False).compute(t_logits, t_boxes, s_logits, s_boxes,
                                                                             crit)
    assert excl["loss_kd_ld_neg_bbox"].item() == pytest.approx(5 * (0.4 + 0.36), rel=1e-4)  # s0 <-> dup
    assert literal["loss_kd_ld_neg_bbox"].item() == pytest.approx(5 * 0.02, rel=1e-4)  # s1 <-> dup


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
    feat = torch.zeros(1, 2, 2, 2)  # d = 2, 2x2 map
    feat[0, 0, 0, 0] = 1.0
    feat[0, 1, 0, 1] = 1.0
    return feat


def test_query_mask_by_hand():
    feat, query = _fd_map(), torch.tensor([[[2.0, 0.0]]])
    valid = torch.ones(1, 2, 2, dtype=torch.bool)
    psi = query_masks(feat, query, valid)[0, 0]
    # s = F . Q / sqrt(2): sqrt(2) at (0, 0), 0 elsewhere; psi = exp(s - max s)
    low = math.exp(-math.sqrt(2))
    assert torch.allclose(psi, torch.tensor([[1.0, low], [low, low]]))
    valid[0, :, 0] = False  # padding: zero there, max taken over valid cells only
    psi = query_masks(feat, query, valid)[0, 0]
    assert torch.allclose(psi, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))


def test_feature_loss_by_hand():
    target, pred = _fd_map(), torch.zeros(1, 2, 2, 2)  # |D|^2 = 1 at (0, 0) and (0, 1)
    query, q = torch.tensor([[[2.0, 0.0]]]), torch.tensor([[0.5]])
    valid = torch.ones(1, 2, 2, dtype=torch.bool)
    M, d, HW = 3, 2, 4
    loss = TargetAwareFeatureDistill.level_loss(target, pred, query, q, valid, M)
    psi01 = math.exp(-math.sqrt(2))
    assert loss.item() == pytest.approx(0.5 * (1.0 + psi01 ** 2) / (M * d * HW), rel=1e-5)  # Eq. 8
    valid[0, :, 1] = False  # padded column: its error and its cells are left out
    loss = TargetAwareFeatureDistill.level_loss(target, pred, query, q, valid, M)
    assert loss.item() == pytest.approx(0.5 * 1.0 / (M * d * 2), rel=1e-5)
    # q = 0 (unmatched) contributes nothing
    assert TargetAwareFeatureDistill.level_loss(target, pred, query, q * 0, valid, M).item() == 0.0


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
    student = _tiny_dino(16, 12, 2, seed=2)  # 12 queries, 2 stages, width 16
    return DistillDETR(student=student, teacher=FrozenTeacher(teacher, allow_uninitialized=True), losses=losses)


def _all_three():
    return {
        "ld": HungarianLogitsDistill(score_threshold=0.0102),  # the random teacher's scores are ~0.01
        "fd": TargetAwareFeatureDistill(student_channels=16, teacher_channels=32, num_levels=4),
        "ad": QueryPriorAssignmentDistill(student_channels=16, teacher_channels=32),
    }


def test_training_step_updates_student_and_adapters_only(inputs, event_storage):
    model = _distiller(_all_three()).train()
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    names = [n for n, _ in model.named_parameters()]
    assert all(n.startswith(("student.", "distill_losses.")) for n in names)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = model(inputs)
    assert {"loss_kd_ld_pos_class", "loss_kd_ld_neg_bbox", "loss_kd_fd", "loss_kd_ad_class"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name, p in model.distill_losses.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert sum(p.grad is not None for p in model.student.parameters()) > 0
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    optimizer.step()
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k  # bit-identical, buffers included


def test_assignment_distillation_uses_the_teachers_matching(inputs, event_storage, monkeypatch):
    ad = QueryPriorAssignmentDistill(student_channels=16, teacher_channels=32)
    model = _distiller({"ad": ad}).train()
    criterion = model.student.criterion
    calls, steps = [], []
    real_stack = criterion.stack_losses
    monkeypatch.setattr(criterion, "stack_losses",
                        lambda lg, bx, tg, idx, n: calls.append((lg, idx)) or real_stack(lg, bx, tg, idx, n))
    real_forward = ad.forward
    monkeypatch.setattr(ad, "forward", lambda step: steps.append(step) or real_forward(step))
    losses = model(inputs)
    step = steps[0]
    group = step.student.record.groups[ad.group_name]
    assert group.logits.shape[:3] == (2, 2, 20)  # every student stage, the teacher's 20 queries
    matching = step.teacher.record.matching
    ad_calls = [idx for lg, idx in calls if lg is group.logits]
    assert len(ad_calls) == 1 and len(ad_calls[0]) == 2
    for per_layer in ad_calls[0]:
        assert per_layer is matching  # the teacher's assignment, as is, for every stage
    expected = real_stack(group.logits, group.boxes, step.targets, [matching] * 2,
                          criterion.num_boxes(step.targets))
    assert losses["loss_kd_ad_bbox"].item() == pytest.approx(expected["loss_bbox"].sum().item(), rel=1e-6)
    # the group carries the teacher's anchors and (adapted) content
    assert torch.allclose(group.references[0], step.teacher.record.queries.anchor_logits.sigmoid())


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
