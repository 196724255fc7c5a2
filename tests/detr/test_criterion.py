"""Set criterion: exact values on hand-built cases."""
import math

import pytest
import torch

from d2kd.detr import HungarianMatcher, SetCriterion
from d2kd.layers import inverse_sigmoid


def _criterion(**weights):
    return SetCriterion(num_classes=2, matcher=HungarianMatcher(), weight_dict=weights or None)


def test_perfect_boxes_give_zero_box_losses():
    gt = torch.tensor([[0.3, 0.4, 0.2, 0.2], [0.7, 0.6, 0.1, 0.3]])
    targets = [{"labels": torch.tensor([0, 1]), "boxes": gt}]
    boxes = torch.tensor([[[0.5, 0.5, 0.3, 0.3], [0.7, 0.6, 0.1, 0.3], [0.3, 0.4, 0.2, 0.2]]])
    logits = torch.full((1, 3, 2), -8.0)
    logits[0, 2, 0] = logits[0, 1, 1] = 8.0
    losses, indices = _criterion()(logits[None], boxes[None], targets)
    rows, cols = indices[-1][0]
    assert dict(zip(rows.tolist(), cols.tolist())) == {1: 1, 2: 0}
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_class"].item() < 1e-3


def test_focal_class_loss_by_hand():
    # one image, 2 queries, 2 classes; query 0 matched to an object of class 1
    logits = torch.tensor([[[0.0, 1.0], [-2.0, 0.5]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]])
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.2]])}]
    crit = _criterion(loss_class=2.0, loss_bbox=5.0, loss_giou=2.0)
    losses = crit.loss_for_indices(logits, boxes, targets, [(torch.tensor([0]), torch.tensor([0]))], 1.0)

    def focal(x, positive):
        p = 1 / (1 + math.exp(-x))
        return 0.25 * (1 - p) ** 2 * -math.log(p) if positive else 0.75 * p ** 2 * -math.log(1 - p)

    expected = focal(0.0, False) + focal(1.0, True) + focal(-2.0, False) + focal(0.5, False)
    assert losses["loss_class"].item() == pytest.approx(2.0 * expected, rel=1e-5)
    # L1: |0.2 - 0.4| on w; GIoU: inter 0.04, union 0.08, hull = union -> 1 - 0.5
    assert losses["loss_bbox"].item() == pytest.approx(5.0 * 0.2, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(2.0 * 0.5, rel=1e-5)
    # the normaliser divides every term
    halved = crit.loss_for_indices(logits, boxes, targets, [(torch.tensor([0]), torch.tensor([0]))], 2.0)
    assert halved["loss_class"].item() == pytest.approx(losses["loss_class"].item() / 2, rel=1e-6)


def test_aux_layer_names_and_no_objects():
    crit = _criterion()
    logits = torch.randn(3, 2, 4, 2, requires_grad=True)
    boxes = inverse_sigmoid(torch.rand(3, 2, 4, 4) * 0.5 + 0.1).requires_grad_(True)
    targets = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2
    losses, _ = crit(logits, boxes.sigmoid(), targets, suffix="_enc")
    assert set(losses) == {f"loss_{t}_enc{s}" for t in ("class", "bbox", "giou") for s in ("", "_0", "_1")}
    assert losses["loss_bbox_enc"].item() == 0 and losses["loss_giou_enc"].item() == 0
    # with no object every query is a negative, normalised by 1 (not 0)
    assert losses["loss_class_enc"].item() > 0
    sum(losses.values()).backward()
    assert boxes.grad is not None and logits.grad is not None


def test_num_boxes_is_at_least_one():
    assert SetCriterion.num_boxes([{"labels": torch.zeros(0), "boxes": torch.zeros(0, 4)}]).item() == 1.0
    assert SetCriterion.num_boxes([{"labels": torch.zeros(3), "boxes": torch.zeros(3, 4)}] * 2).item() == 6.0


def test_unknown_weight_is_rejected():
    with pytest.raises(ValueError, match="loss_ce"):
        SetCriterion(2, HungarianMatcher(), weight_dict={"loss_ce": 1.0})
