"""KD-DETR (d2kd/distill/kd_detr.py): loss terms by hand, the points, isolation from detection,
the general-to-specific schedule, heterogeneous students, offline == online, a config smoke."""
import copy
import math
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from d2kd.distill.base import DistillStep
from d2kd.distill.kd_detr import (
    KDDETR,
    box_distillation,
    general_to_specific_weights,
    sample_general_points,
    sigmoid_class_distillation,
    sigmoid_to_softmax_targets,
    softmax_class_distillation,
    weighted_point_mean,
)
from d2kd.meta_arch import DistillDETR, FrozenTeacher, HeteroDistill, TeacherCheckpointError, run_detector
from d2kd.meta_arch.base import normalized_targets
from d2kd.meta_arch.views import group_hook

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_CLASSES = 3


# ------------------------------------------------------------------------- tiny models, inputs
def _load(name):
    return LazyConfig.load(os.path.join(ROOT, "configs", "common", "models", f"{name}.py")).model


def _resnet18(backbone_cfg):
    backbone_cfg.bottom_up.stages.depth = 18
    backbone_cfg.bottom_up.stages.norm = "BN"
    backbone_cfg.bottom_up.freeze_at = 0


def tiny_dino(width=32, num_queries=12, dec_layers=2, seed=0):
    cfg = _load("dino")
    _resnet18(cfg.backbone)
    cfg.num_classes, cfg.num_queries, cfg.embed_dim = NUM_CLASSES, num_queries, width
    cfg.encoder.num_layers, cfg.decoder.num_layers = 1, dec_layers
    cfg.encoder.ffn_dim = cfg.decoder.ffn_dim = 2 * width
    cfg.denoising.num_queries = 6
    torch.manual_seed(seed)
    model = instantiate(cfg)
    # DETR box heads start at zero deltas (every layer predicts its reference box), which
    # would make untrained teacher and student agree on every box
    for head in model.decoder.box_heads:
        torch.nn.init.normal_(head.layers[-1].weight, std=0.1)
    return model


def tiny_detectron2(name, seed=0):
    cfg = _load(name)
    _resnet18(cfg.backbone)
    cfg.backbone.bottom_up.stem.norm = "BN"
    cfg.backbone.out_channels = 32
    if name == "faster_rcnn_fpn":
        cfg.roi_heads.num_classes = NUM_CLASSES
        cfg.roi_heads.batch_size_per_image = 32
        cfg.roi_heads.box_head.fc_dims = [64, 64]
        cfg.roi_heads.box_predictor.input_shape.channels = 64
        cfg.proposal_generator.anchor_generator.sizes = [[8], [16], [32], [64], [128]]
        cfg.proposal_generator.pre_nms_topk = (200, 100)
        cfg.proposal_generator.post_nms_topk = (100, 50)
    else:  # retinanet, fcos
        cfg.num_classes = NUM_CLASSES
        cfg.head.input_shape = [ShapeSpec(channels=32)] * 5
        cfg.head.conv_dims = [32]
        if name == "retinanet":
            cfg.anchor_generator.sizes = [[x, x * 2 ** (1 / 3), x * 2 ** (2 / 3)] for x in [8, 16, 32, 64, 128]]
    torch.manual_seed(seed)
    return instantiate(cfg)


def make_input(height, width, num_objects, seed):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g)
    inst = Instances((height, width))
    xy = torch.rand(num_objects, 2, generator=g) * torch.tensor([width * 0.6, height * 0.6])
    wh = 8 + torch.rand(num_objects, 2, generator=g) * torch.tensor([width * 0.3, height * 0.3])
    inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
    inst.gt_classes = torch.randint(0, NUM_CLASSES, (num_objects,), generator=g)
    return {"image": image, "instances": inst, "height": height, "width": width}


@pytest.fixture(scope="module")
def inputs():
    """Two images of different sizes (one is padded), 3 and 1 objects."""
    return [make_input(64, 80, 3, seed=1), make_input(48, 64, 1, seed=2)]


@pytest.fixture(scope="module")
def dino_teacher():
    """Wider, more queries and more decoder layers than the students."""
    return FrozenTeacher(tiny_dino(width=64, num_queries=16, dec_layers=3, seed=1), allow_uninitialized=True)


def kd(**kw):
    kw.setdefault("num_general", 8)
    return KDDETR(**kw)


def detr_distiller(teacher, **kw):
    return DistillDETR(student=tiny_dino(), teacher=teacher, losses={"kd_detr": kd(**kw)}, max_iter=100)


def manual_step(distiller, inputs, knowledge=None, student_seed=0):
    """What DistillerBase.forward_train does, with the step kept (online, or offline from
    ``knowledge``). Returns (step, student losses, kd losses)."""
    methods = list(distiller.distill_losses.values())
    step = DistillStep(inputs, normalized_targets(inputs, distiller.device), 0, distiller.max_iter,
                       knowledge=knowledge)
    if knowledge is None:
        with distiller.teacher.autocast() as teacher:
            _, step.teacher = run_detector(teacher, inputs, with_losses=False,
                                           extra_groups=group_hook(methods, step, "teacher"))
    torch.manual_seed(student_seed)  # the student's denoising noise
    losses, step.student = run_detector(distiller.student, inputs, with_losses=True,
                                        extra_groups=group_hook(methods, step, "student"))
    kd_losses = {}
    for method in methods:
        kd_losses.update(method(step))
    return step, losses, kd_losses


# ------------------------------------------------------------------------- loss terms by hand
def test_sigmoid_class_terms_by_hand():
    s = torch.tensor([[0.0, 1.0]])
    t = torch.tensor([[1.0, -1.0]])

    def sig(x):
        return 1 / (1 + math.exp(-x))

    def bern_kl(p, q):  # KL(Bernoulli(p) || Bernoulli(q))
        return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))

    expected = bern_kl(sig(1.0), sig(0.0)) + bern_kl(sig(-1.0), sig(1.0))
    assert sigmoid_class_distillation(s, t, "bce").item() == pytest.approx(expected, rel=1e-5)
    assert sigmoid_class_distillation(t, t, "bce").abs().item() < 1e-6
    # KL over softmax(./T), times T^2
    T = 10.0
    pt = torch.tensor([1.0, -1.0]).div(T).softmax(0)
    ps = torch.tensor([0.0, 1.0]).div(T).softmax(0)
    expected = T * T * float((pt * (pt / ps).log()).sum())
    assert sigmoid_class_distillation(s, t, "kl", T).item() == pytest.approx(expected, rel=1e-5)
    # softmax KL ignores a shift of all logits, the binary KL does not (why "bce" is the default)
    assert sigmoid_class_distillation(t + 3, t, "kl", T).item() == pytest.approx(0.0, abs=1e-6)
    assert sigmoid_class_distillation(t + 3, t, "bce").item() > 0.5


def test_softmax_map_and_its_kl_by_hand():
    t = torch.tensor([[0.0, math.log(1 / 3)]])  # sigmoid: 0.5, 0.25
    q = sigmoid_to_softmax_targets(t)
    assert torch.allclose(q, torch.tensor([[1 / 3, 1 / 6, 1 / 2]]), atol=1e-6)
    s = torch.tensor([[0.0, 0.0, 0.0]])  # uniform over K + 1 = 3
    expected = sum(p * math.log(p * 3) for p in (1 / 3, 1 / 6, 1 / 2))
    assert softmax_class_distillation(s, q).item() == pytest.approx(expected, rel=1e-5)
    assert softmax_class_distillation(q.log(), q).item() == pytest.approx(0.0, abs=1e-6)


def test_frcnn_foreground_class_target_by_hand(monkeypatch):
    from types import SimpleNamespace

    from d2kd.distill import views

    t_logits = torch.tensor([[[0.0, math.log(1 / 3)]]])  # [B=1, N=1, K=2]; sigmoid 0.5, 0.25
    s_logits = torch.tensor([[0.3, -0.2, 0.0]], requires_grad=True)  # [B*N, K + 1], background last
    monkeypatch.setattr(views, "rcnn_predict_at", lambda view, boxes: (s_logits, torch.tensor([[[2.0, 2.0, 6.0, 6.0]]])))
    view = SimpleNamespace(images=SimpleNamespace(image_sizes=[(8, 8)]))
    points, t_boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.5]]]), torch.tensor([[[0.5, 0.5, 0.5, 0.5]]])
    assert kd().rcnn_class_target == "foreground"  # the default, chosen by measurement (module doc)
    fg = kd(foreground_weighting=False)._rcnn_terms(view, points, t_logits, t_boxes)
    q = torch.tensor([2 / 3, 1 / 3])  # the teacher's classes given foreground
    expected = (q * (q.log() - s_logits[0, :2].log_softmax(-1))).sum()
    assert fg["cls"].item() == pytest.approx(expected.item(), rel=1e-5)
    fg["cls"].backward()
    assert s_logits.grad[0, 2] == 0  # the background logit is left to the student's own losses
    both = kd(rcnn_class_target="with_background", foreground_weighting=False)._rcnn_terms(
        view, points, t_logits, t_boxes)
    q3 = sigmoid_to_softmax_targets(t_logits)[0, 0]
    assert both["cls"].item() == pytest.approx((q3 * (q3.log() - s_logits[0].log_softmax(-1))).sum().item(), rel=1e-5)
    with pytest.raises(ValueError, match="rcnn_class_target"):
        kd(rcnn_class_target="soft")


def test_box_terms_by_hand():
    s = torch.tensor([[0.5, 0.5, 0.2, 0.2]])  # xyxy 0.4 0.4 0.6 0.6
    t = torch.tensor([[0.55, 0.5, 0.2, 0.2]])  # xyxy 0.45 0.4 0.65 0.6
    l1, giou = box_distillation(s, t)
    assert l1.item() == pytest.approx(0.05 / 4)
    # intersection 0.15 x 0.2 = 0.03, union 0.05, hull 0.25 x 0.2 = 0.05: GIoU = IoU = 0.6
    assert giou.item() == pytest.approx(0.4, rel=1e-5)


def test_foreground_weighting_by_hand():
    values = torch.tensor([[1.0, 3.0], [2.0, 2.0]])  # 2 layers x 2 points
    weights = torch.tensor([0.25, 0.75])
    # layer 0: (0.25 + 2.25) / 1 = 2.5; layer 1: 2
    assert weighted_point_mean(values, weights).item() == pytest.approx(4.5)


def test_method_terms_by_hand():
    """_sigmoid_terms = weights x foreground-weighted means, summed over student layers."""
    method = kd()
    t_logits = torch.tensor([[[0.0, -10.0, -10.0], [math.log(3), -10.0, -10.0]]])  # max p: 0.5, 0.75
    t_boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]]])
    s_logits = torch.stack([t_logits, t_logits + 1])  # [D=2, B=1, N=2, K=3]
    s_boxes = torch.stack([t_boxes, t_boxes + torch.tensor([0.05, 0, 0, 0])])
    terms = method._sigmoid_terms(s_logits, s_boxes, t_logits, t_boxes)
    w = torch.tensor([0.5, 0.75])
    cls1 = sigmoid_class_distillation(t_logits[0] + 1, t_logits[0])
    assert terms["cls"].item() == pytest.approx(float((cls1 * w).sum() / w.sum()), rel=1e-5)
    assert terms["bbox"].item() == pytest.approx(0.05 / 4, rel=1e-5)  # same shift on both points
    assert terms["giou"].item() == pytest.approx(0.4, rel=1e-4)


def test_general_to_specific_schedule():
    assert general_to_specific_weights(0.0) == (1.0, 0.5)
    assert general_to_specific_weights(0.5) == (0.75, 0.75)
    assert general_to_specific_weights(1.0) == (0.5, 1.0)
    # a window: constant before and after it
    assert general_to_specific_weights(0.1, (1.0, 0.0), (0.0, 1.0), anneal=(0.2, 0.6)) == (1.0, 0.0)
    assert general_to_specific_weights(0.4, (1.0, 0.0), (0.0, 1.0), anneal=(0.2, 0.6)) == pytest.approx((0.5, 0.5))
    assert general_to_specific_weights(0.9, (1.0, 0.0), (0.0, 1.0), anneal=(0.2, 0.6)) == (0.0, 1.0)
    assert general_to_specific_weights(0.3, 1.0, 1.0) == (1.0, 1.0)  # the reference: constant
    method = kd(general_weight=0.0)
    assert method.groups == ("specific",) and method.group_weights(0.2) == {"specific": 0.6}
    assert kd(specific_weight=0).groups == ("general",)
    with pytest.raises(ValueError, match="both groups are off"):
        kd(general_weight=0, specific_weight=0)


def test_general_points_cover_the_image():
    g = torch.Generator().manual_seed(0)
    pts = sample_general_points(2, 4000, generator=g)
    assert pts.shape == (2, 4000, 4)
    xyxy = torch.cat([pts[..., :2] - pts[..., 2:] / 2, pts[..., :2] + pts[..., 2:] / 2], -1)
    assert (xyxy >= -1e-6).all() and (xyxy <= 1 + 1e-6).all() and (pts[..., 2:] > 0).all()
    # centres spread over the whole image, unlike the reference's N(0, 1) logits
    corner = ((pts[..., 0] < 0.1) & (pts[..., 1] < 0.1)).float().mean()
    assert 0.005 < corner < 0.02  # 1% of the area
    normal = sample_general_points(2, 4000, distribution="normal", generator=g)
    assert ((normal[..., 0] < 0.1) & (normal[..., 1] < 0.1)).float().mean() < 0.001
    assert torch.equal(sample_general_points(1, 5, generator=torch.Generator().manual_seed(3)),
                       sample_general_points(1, 5, generator=torch.Generator().manual_seed(3)))


# ------------------------------------------------------------------------- DETR -> DETR
@pytest.fixture(scope="module")
def online(dino_teacher, inputs):
    distiller = detr_distiller(dino_teacher, num_specific=10).train()
    with EventStorage(0):
        step, losses, kd_losses = manual_step(distiller, inputs)
    return distiller, step, losses, kd_losses


def test_same_points_reach_teacher_and_student(online):
    _, step, _, kd_losses = online
    points = step.cache["kd_detr"]
    assert points["general"].shape == (2, 8, 4) and points["specific"].shape == (2, 10, 4)
    # the teacher's specific points are its own top-10 detection anchors (ranked proposals)
    assert torch.allclose(points["specific"], step.teacher.record.queries.anchor_logits[:, :10].sigmoid())
    # the teacher's targets at the specific points are its detections (reused, not decoded again)
    assert "kd_detr_specific" not in step.teacher.record.groups
    det = step.teacher.record.outputs
    for g in ("general", "specific"):
        t = step.teacher.record.groups["kd_detr_general"] if g == "general" else det
        s = step.student.record.groups[f"kd_detr_{g}"]
        n = s.references.shape[2]
        assert torch.allclose(t.references[0, :, :n], s.references[0], atol=1e-5)  # layer 0: the anchors
        assert torch.allclose(s.references[0], points[g], atol=1e-4)
        assert t.logits.shape[0] == 3 and s.logits.shape[0] == 2  # teacher 3 layers, student 2
        assert s.hidden.shape[-1] == 32 and t.hidden.shape[-1] == 64
    assert "dn" not in step.teacher.record.groups and "dn" in step.student.record.groups
    expected = {f"loss_kd_kddetr_{g}_{t}" for g in ("general", "specific") for t in ("cls", "bbox", "giou")}
    assert set(kd_losses) == expected
    assert all(torch.isfinite(v) and v > 0 for v in kd_losses.values())


@pytest.mark.parametrize("reuse", [True, False])
def test_teacher_targets_at_the_specific_points(dino_teacher, inputs, reuse):
    distiller = detr_distiller(dino_teacher, num_specific=10, reuse_teacher_detections=reuse).train()
    with EventStorage(0):
        step, _, _ = manual_step(distiller, inputs)
    method, record = distiller.distill_losses["kd_detr"], step.teacher.record
    targets = method.teacher_predictions(step)["specific"]
    anchors = record.queries.anchor_logits[:, :10]
    if reuse:
        # no second teacher pass over its own queries: the targets are what the teacher predicts
        # for its top-10 queries in plain inference, at their unclipped anchors
        assert "kd_detr_specific" not in record.groups
        assert torch.allclose(step.cache["kd_detr"]["specific"], anchors.sigmoid())
        with dino_teacher.autocast() as teacher:
            _, plain = run_detector(teacher, inputs, with_losses=False)
        assert torch.allclose(targets[0], plain.record.outputs.logits[-1, :, :10], atol=1e-5)
        assert torch.allclose(targets[1], plain.record.outputs.boxes[-1, :, :10], atol=1e-6)
    else:
        decoded = record.groups["kd_detr_specific"]
        assert torch.equal(targets[0], decoded.logits[-1].float())
        # decoded at the clipped anchors with the chosen (mean) content, not the learned one
        assert not torch.allclose(targets[0], record.outputs.logits[-1, :, :10], atol=1e-3)


def test_loss_is_every_student_layer_against_the_teachers_last(online):
    distiller, step, _, kd_losses = online
    method = distiller.distill_losses["kd_detr"]
    t = step.teacher.record.groups["kd_detr_general"]
    s = step.student.record.groups["kd_detr_general"]
    manual = method._sigmoid_terms(s.logits, s.boxes, t.logits[-1], t.boxes[-1])
    w_general = 1.0  # progress 0
    assert kd_losses["loss_kd_kddetr_general_giou"].item() == pytest.approx(2 * w_general * manual["giou"].item())
    assert kd_losses["loss_kd_kddetr_specific_bbox"].item() > 0


def test_schedule_moves_weight_from_general_to_specific(online):
    distiller, step, _, at_start = online
    method = distiller.distill_losses["kd_detr"]
    late = copy.copy(step)
    late.iteration = step.max_iter  # progress 1: general 1 -> 0.5, specific 0.5 -> 1
    at_end = method(late)
    for k, v in at_start.items():
        factor = 0.5 if "_general_" in k else 2.0
        assert at_end[k].item() == pytest.approx(factor * v.item(), rel=1e-5), k


@pytest.mark.parametrize("options", [dict(content="mean", class_loss="kl", distribution="normal"),
                                     dict(specific_weight=0), dict(general_weight=0, num_specific=4)])
def test_options_train(dino_teacher, inputs, options):
    distiller = detr_distiller(dino_teacher, **options).train()
    with EventStorage(0):
        losses = distiller(inputs)
    kd_terms = {k: v for k, v in losses.items() if k.startswith("loss_kd_")}
    groups = {k.split("_")[3] for k in kd_terms}
    expected = {"general", "specific"} - {g for g in ("general", "specific") if options.get(f"{g}_weight") == 0}
    assert groups == expected and len(kd_terms) == 3 * len(expected)
    assert all(torch.isfinite(v) for v in kd_terms.values())


def test_kd_queries_change_no_detection_output_or_matching(online, inputs):
    distiller, step, losses, _ = online
    student = distiller.student
    with EventStorage(0):
        torch.manual_seed(0)
        plain_losses, plain = run_detector(student, inputs, with_losses=True)
        # other points for the KD groups: still the same detection outputs
        moved = DistillStep(inputs, step.targets, cache={"kd_detr": {
            g: (p + 0.05).clamp(0.01, 0.99) for g, p in step.cache["kd_detr"].items()}})
        torch.manual_seed(0)
        moved_losses, moved_view = run_detector(student, inputs, with_losses=True, extra_groups=group_hook(
            list(distiller.distill_losses.values()), moved, "student"))
    for view in (plain, moved_view):
        assert torch.allclose(view.record.outputs.logits, step.student.record.outputs.logits, atol=1e-5)
        assert torch.allclose(view.record.outputs.boxes, step.student.record.outputs.boxes, atol=1e-5)
        for (qa, ga), (qb, gb) in zip(view.record.matching, step.student.record.matching):
            assert torch.equal(qa, qb) and torch.equal(ga, gb)
    for other in (plain_losses, moved_losses):
        assert set(other) == set(losses)
        for k in losses:
            assert torch.allclose(other[k], losses[k], atol=1e-5), k
    assert not torch.allclose(moved_view.record.groups["kd_detr_general"].boxes,
                              step.student.record.groups["kd_detr_general"].boxes)


def test_training_step_leaves_teacher_untouched(dino_teacher, inputs):
    distiller = detr_distiller(dino_teacher).train()
    before = {k: v.clone() for k, v in dino_teacher.model.state_dict().items()}
    opt = torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=0.1)
    with EventStorage(0):
        losses = distiller(inputs)
        kd_total = sum(v for k, v in losses.items() if k.startswith("loss_kd_"))
        kd_total.backward(retain_graph=True)
        # the KD loss alone trains the student's decoder (and through it the encoder)
        assert distiller.student.decoder.layers[0].cross_attn.value_proj.weight.grad.abs().sum() > 0
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert all(p.grad is None and not p.requires_grad for p in dino_teacher.model.parameters())
    for k, v in dino_teacher.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not dino_teacher.model.training


def test_teacher_in_training_mode_is_refused(inputs):
    teacher = FrozenTeacher(tiny_dino(width=32, seed=3), allow_uninitialized=True)
    distiller = detr_distiller(teacher).train()
    teacher.model.train()  # bypasses FrozenTeacher.train on purpose
    with EventStorage(0), pytest.raises(RuntimeError, match="eval mode"):
        distiller(inputs)


def test_offline_equals_online(online, inputs):
    distiller, step, _, kd_losses = online
    method = distiller.distill_losses["kd_detr"]
    knowledge = [{"kd_detr": k} for k in method.export_knowledge(step)]
    assert set(knowledge[0]["kd_detr"]) == {f"{g}_{t}" for g in ("general", "specific")
                                            for t in ("points", "logits", "boxes")}
    assert knowledge[0]["kd_detr"]["general_logits"].shape == (8, NUM_CLASSES)
    with EventStorage(0):
        _, _, offline = manual_step(distiller, inputs, knowledge=knowledge)
        half = [{"kd_detr": {k: v.half() for k, v in kn["kd_detr"].items()}} for kn in knowledge]
        _, _, offline16 = manual_step(distiller, inputs, knowledge=half)
    for k, v in kd_losses.items():
        assert torch.allclose(offline[k], v, rtol=1e-5, atol=1e-6), k
        assert torch.allclose(offline16[k], v, rtol=5e-2, atol=1e-3), k
    with pytest.raises(KeyError, match=r"under 'kd_detr'.*stored methods: \['other'\]"):
        bad = DistillStep(inputs, step.targets, knowledge=[{"other": kn["kd_detr"]} for kn in knowledge])
        method.points(bad)


# ------------------------------------------------------------------------- heterogeneous
@pytest.fixture(scope="module")
def frcnn_pair(dino_teacher):
    student = tiny_detectron2("faster_rcnn_fpn")
    with_kd = HeteroDistill(student=student, teacher=dino_teacher,
                            losses={"kd_detr": kd(num_specific=10)}, max_iter=10).train()
    without = HeteroDistill(student=student, teacher=dino_teacher, losses={}, max_iter=10).train()
    return with_kd, without


def test_frcnn_student_box_head_learns_from_the_points(frcnn_pair, inputs):
    with_kd, without = frcnn_pair
    with EventStorage(0):
        torch.manual_seed(5)
        losses = with_kd(inputs)
        torch.manual_seed(5)
        plain = without(inputs)
        # the student's own RPN / RoI losses are exactly those without KD (same sampling)
        own = {k: v for k, v in losses.items() if not k.startswith("loss_kd_")}
        assert set(own) == set(plain)
        for k in plain:
            assert torch.equal(own[k], plain[k]), k
        kd_terms = {k: v for k, v in losses.items() if k.startswith("loss_kd_")}
        assert len(kd_terms) == 6 and all(torch.isfinite(v) for v in kd_terms.values())
        with_kd.zero_grad()
        sum(kd_terms.values()).backward()
    head = with_kd.student.roi_heads
    assert head.box_head.fc1.weight.grad.abs().sum() > 0
    assert head.box_predictor.cls_score.weight.grad.abs().sum() > 0
    assert head.box_predictor.bbox_pred.weight.grad.abs().sum() > 0
    # nothing reaches the RPN: the points are not proposals
    assert with_kd.student.proposal_generator.rpn_head.conv.weight.grad is None


def test_frcnn_offline_equals_online(frcnn_pair, inputs):
    with_kd, _ = frcnn_pair
    with EventStorage(0):
        step, _, online_losses = manual_step(with_kd, inputs)
        method = with_kd.distill_losses["kd_detr"]
        knowledge = [{"kd_detr": k} for k in method.export_knowledge(step)]
        _, _, offline = manual_step(with_kd, inputs, knowledge=knowledge)
    for k, v in online_losses.items():
        assert torch.allclose(offline[k], v, rtol=1e-5, atol=1e-6), k


@pytest.mark.parametrize("name", ["retinanet", "fcos"])
def test_dense_students_distill_at_their_anchors(dino_teacher, inputs, name):
    student = tiny_detectron2(name)
    distiller = HeteroDistill(student=student, teacher=dino_teacher, max_iter=10,
                              losses={"kd_detr": kd(num_specific=10, point_source="student_anchors")}).train()
    with EventStorage(0):
        losses = distiller(inputs)
        kd_terms = {k: v for k, v in losses.items() if k.startswith("loss_kd_")}
        assert len(kd_terms) == 6 and all(torch.isfinite(v) for v in kd_terms.values())
        sum(kd_terms.values()).backward()
    assert student.head.cls_score.weight.grad.abs().sum() > 0
    assert student.head.bbox_pred.weight.grad.abs().sum() > 0
    # without point_source="student_anchors" the configuration is refused, clearly
    wrong = HeteroDistill(student=student, teacher=dino_teacher, losses={"kd_detr": kd()}).train()
    with EventStorage(0), pytest.raises(ValueError, match="student_anchors"):
        wrong(inputs)


# ------------------------------------------------------------------------- configs
def test_builtin_hetero_config_trains_one_step():
    from d2kd.engine.smoke import run_smoke_step

    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "kd_detr", "dino_to_frcnn_builtin.py"))
    # CPU-test size: the DINO teacher's queries and the KD points
    cfg.model.teacher.model.num_queries = 50
    cfg.model.losses.kd_detr.num_general = 20
    result = run_smoke_step(cfg)
    kd_keys = [k for k in result["losses"] if k.startswith("loss_kd_kddetr")]
    assert len(kd_keys) == 6 and result["changed"] > 0
    assert "loss_cls" in result["losses"] and "loss_rpn_cls" in result["losses"]


def test_config_without_teacher_checkpoint_fails_clearly(tmp_path):
    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "kd_detr", "dino_R50_to_R18_builtin.py"))
    assert cfg.model.teacher.weights.endswith("model_final.pth")
    teacher = copy.deepcopy(cfg.model.teacher)
    teacher.weights = str(tmp_path / "missing" / "model_final.pth")
    with pytest.raises(TeacherCheckpointError, match="not found"):
        instantiate(teacher)


_KD_FIELDS = ("num_general", "num_specific", "distribution", "share_points_across_batch", "general_weight",
              "specific_weight", "class_loss", "temperature", "normalization", "content",
              "reuse_teacher_detections", "foreground_weighting")


def _kd_detr_of(config):
    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "kd_detr", config))
    method = instantiate(cfg.model.losses.kd_detr)
    return {f: getattr(method, f) for f in _KD_FIELDS}


def test_variant_config_is_the_old_default():
    """dino_R50_to_R18_variant_builtin.py is d2kd's variant, the default before the published
    method replaced it: 100 uniform general points, general 1 -> 0.5 / specific 0.5 -> 1,
    binary KL, every other field the KDDETR default."""
    default = {f: getattr(KDDETR(), f) for f in _KD_FIELDS}
    expected = dict(default, num_general=100, num_specific=None, general_weight=(1.0, 0.5),
                    specific_weight=(0.5, 1.0), class_loss="bce")
    assert _kd_detr_of("dino_R50_to_R18_variant_builtin.py") == expected
    assert expected["distribution"] == "uniform" and not expected["share_points_across_batch"]
    assert expected["content"] == "mean" and expected["reuse_teacher_detections"]


def test_default_config_is_the_published_method():
    assert _kd_detr_of("dino_R50_to_R18_builtin.py") == dict(
        num_general=100, num_specific=None, distribution="normal", share_points_across_batch=True,
        general_weight=(1.0, 1.0), specific_weight=(1.0, 1.0), class_loss="kl", temperature=10.0,
        normalization="reference", content="zero", reuse_teacher_detections=False, foreground_weighting=True)
    # the COCO pairs: the published method with the paper's 300 general points
    for config in ("dino_R50_to_R18.py", "dino_R101_to_R50.py"):
        fields = _kd_detr_of(config)
        assert fields["class_loss"] == "kl" and fields["num_general"] == 300 and fields["share_points_across_batch"]
    assert _kd_detr_of("dino_R50_to_R18_variant.py")["class_loss"] == "bce"


# ------------------------------------------------------------------------- points and reference mode
def _fake_det(B=2, N=5, width=8, seed=0):
    from d2kd.detr.queries import QueryGroup

    g = torch.Generator().manual_seed(seed)
    return QueryGroup("det", torch.randn(B, N, width, generator=g), 3 * torch.randn(B, N, 4, generator=g))


def test_general_points_are_fresh_every_step_and_shared_within_it(inputs):
    method = kd(num_general=6)
    det = _fake_det()
    a = method.points(DistillStep(inputs, None), det)
    step = DistillStep(inputs, None)
    b = method.points(step, det)
    assert not torch.allclose(a["general"], b["general"])  # redrawn at every step
    assert method.points(step) is b  # ... and one draw per step, whoever asks
    assert torch.equal(a["specific"], b["specific"])  # the teacher's anchors, unchanged


def test_points_are_clipped_once_where_they_are_made(inputs):
    method = kd(num_general=50, distribution="normal", reuse_teacher_detections=False)
    points = method.points(DistillStep(inputs, None), _fake_det(N=40))
    for g in ("general", "specific"):
        xyxy = torch.cat([points[g][..., :2] - points[g][..., 2:] / 2, points[g][..., :2] + points[g][..., 2:] / 2], -1)
        assert xyxy.min() >= -1e-6 and xyxy.max() <= 1 + 1e-6, g
    # the raw anchors of _fake_det leave the image: clipping did something
    assert (torch.sigmoid(_fake_det(N=40).anchor_logits)[..., 2:] > 0.9).any()


def test_shared_points_are_one_set_per_batch():
    shared = sample_general_points(3, 7, distribution="normal", share_across_batch=True,
                                   generator=torch.Generator().manual_seed(0))
    assert shared.shape == (3, 7, 4) and torch.equal(shared[0], shared[1]) and torch.equal(shared[1], shared[2])
    per_image = sample_general_points(3, 7, distribution="normal", generator=torch.Generator().manual_seed(0))
    assert not torch.equal(per_image[0], per_image[1])


def test_reference_normalisation_and_foreground_switch_by_hand():
    torch.manual_seed(0)
    s_logits, t_logits = torch.randn(2, 1, 4, 3), torch.randn(1, 4, 3)  # [D, B, N, K], [B, N, K]
    s_boxes = torch.rand(2, 1, 4, 4) * 0.3 + 0.3
    t_boxes = torch.rand(1, 4, 4) * 0.3 + 0.3
    w = t_logits.sigmoid().amax(-1)
    T = 10.0
    kl = (t_logits / T).softmax(-1) * ((t_logits / T).log_softmax(-1) - (s_logits / T).log_softmax(-1))
    l1 = (s_boxes - t_boxes).abs().mean(-1)
    ref = kd(class_loss="kl", temperature=T, normalization="reference")._sigmoid_terms(s_logits, s_boxes, t_logits,
                                                                                          t_boxes)
    # class: T^2 * mean over classes, weighted SUM over points and layers (no normaliser)
    assert torch.allclose(ref["cls"], (kl.mean(-1) * T**2 * w).sum(), rtol=1e-5)
    assert torch.allclose(ref["bbox"], ((l1 * w).sum((1, 2)) / w.sum()).sum(), rtol=1e-5)
    ours = kd(class_loss="kl", temperature=T)._sigmoid_terms(s_logits, s_boxes, t_logits, t_boxes)
    assert torch.allclose(ours["cls"], ((kl.sum(-1) * T**2 * w).sum((1, 2)) / w.sum()).sum(), rtol=1e-5)
    flat = kd(class_loss="kl", temperature=T, foreground_weighting=False)._sigmoid_terms(
        s_logits, s_boxes, t_logits, t_boxes)
    assert torch.allclose(flat["bbox"], l1.mean((1, 2)).sum(), rtol=1e-5)
    with pytest.raises(ValueError, match="normalization"):
        kd(normalization="sum")


@pytest.mark.parametrize("class_loss", ["bce", "kl"])
def test_zero_loss_when_the_student_is_the_teacher(inputs, class_loss):
    # one decoder layer: every student layer is compared with the teacher's last one
    teacher = FrozenTeacher(tiny_dino(width=32, num_queries=12, dec_layers=1, seed=3), allow_uninitialized=True)
    student = copy.deepcopy(teacher.model)
    # both models decode every point with the same (mean) content: reused detections would give
    # the teacher its learned content at the specific points
    distiller = DistillDETR(student=student, teacher=teacher, max_iter=10,
                            losses={"kd_detr": kd(class_loss=class_loss, reuse_teacher_detections=False)})
    distiller.eval()  # BatchNorm and dropout as in the teacher
    with EventStorage(0):
        _, _, kd_losses = manual_step(distiller, inputs)
    assert len(kd_losses) == 6
    for k, v in kd_losses.items():
        assert abs(float(v)) < 1e-5, (k, float(v))


def test_frcnn_student_pools_exactly_the_teachers_points(frcnn_pair, inputs, monkeypatch):
    from d2kd.distill import views

    with_kd, _ = frcnn_pair
    seen = []
    original = views.rcnn_predict_at

    def spy(view, boxes):
        seen.append([b.detach().clone() for b in boxes])
        return original(view, boxes)

    monkeypatch.setattr(views, "rcnn_predict_at", spy)
    with EventStorage(0):
        step, _, _ = manual_step(with_kd, inputs)
    points = with_kd.distill_losses["kd_detr"].points(step)
    sizes = step.student.images.image_sizes
    assert len(seen) == 2
    for group, boxes in zip(("general", "specific"), seen):
        for b, (h, w) in enumerate(sizes):
            p = points[group][b]
            want = torch.stack([p[:, 0] - p[:, 2] / 2, p[:, 1] - p[:, 3] / 2,
                                p[:, 0] + p[:, 2] / 2, p[:, 1] + p[:, 3] / 2], -1) * torch.tensor([w, h, w, h])
            assert torch.allclose(boxes[b], want, atol=1e-4), group
            if group == "specific":
                continue  # the teacher's detection anchors, as it decoded them (may cross the border)
            assert boxes[b].min() >= -1e-4 and (boxes[b][:, 2] <= w + 1e-3).all() and (boxes[b][:, 3] <= h + 1e-3).all()


@pytest.mark.parametrize("name", ["retinanet", "fcos"])
def test_dense_teacher_decodes_exactly_the_students_anchors(dino_teacher, inputs, name, monkeypatch):
    student = tiny_detectron2(name)
    distiller = HeteroDistill(student=student, teacher=dino_teacher, max_iter=10,
                              losses={"kd_detr": kd(num_specific=10, point_source="student_anchors")}).train()
    decoded_points = []
    original = type(dino_teacher.model).decode

    def spy(self, enc, groups):
        decoded_points.extend(g.anchor_logits.sigmoid() for g in groups if g.name.startswith("kd_detr"))
        return original(self, enc, groups)

    monkeypatch.setattr(type(dino_teacher.model), "decode", spy)
    with EventStorage(0):
        distiller(inputs)
        images = student.preprocess_image(inputs)
        features = [student.backbone(images.tensor)[f] for f in student.head_in_features]
        anchors = torch.cat([a.tensor for a in student.anchor_generator(features)])  # [M, 4] xyxy px
    assert len(decoded_points) == 2  # general and specific
    for points in decoded_points:
        for b, (h, w) in enumerate(images.image_sizes):
            scale = torch.tensor([w, h, w, h], dtype=torch.float32)
            xyxy = torch.cat([points[b][:, :2] - points[b][:, 2:] / 2, points[b][:, :2] + points[b][:, 2:] / 2], -1)
            px = xyxy * scale
            # every point is one of the student's anchors, unclipped, and lies inside the image
            dist = (px[:, None] - anchors[None]).abs().amax(-1).amin(-1)
            assert dist.max() < 1e-2, float(dist.max())
            assert px.min() >= -1e-2 and (px[:, 2] <= w + 1e-2).all() and (px[:, 3] <= h + 1e-2).all()
