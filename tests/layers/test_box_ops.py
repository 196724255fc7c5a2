"""Box conversions and (generalized) IoU against values worked out by hand."""
import torch

from d2kd.layers import (
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    inverse_sigmoid,
    pairwise_box_iou,
    pairwise_generalized_box_iou,
)


def test_conversions_round_trip():
    boxes = torch.rand(2, 5, 4)
    assert torch.allclose(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes)), boxes, atol=1e-6)
    expected = torch.tensor([0.4, 0.3, 0.6, 0.7])
    assert torch.allclose(box_cxcywh_to_xyxy(torch.tensor([0.5, 0.5, 0.2, 0.4])), expected)


def test_iou_and_giou_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 5.0, 1.0]])
    iou, union = pairwise_box_iou(a, b)
    assert torch.allclose(iou, torch.tensor([[1 / 7, 0.0]]))
    assert torch.allclose(union, torch.tensor([[7.0, 5.0]]))
    giou = pairwise_generalized_box_iou(a, b)
    # hulls: 3x3 = 9 and 5x2 = 10
    assert torch.allclose(giou, torch.tensor([[1 / 7 - 2 / 9, 0.0 - 5 / 10]]))
    assert torch.allclose(generalized_box_iou(a.expand(2, 4), b), giou[0])
    assert torch.allclose(generalized_box_iou(b, b), torch.ones(2))


def test_pairwise_broadcasts_over_leading_dims():
    a, b = box_cxcywh_to_xyxy(torch.rand(3, 2, 5, 4)), box_cxcywh_to_xyxy(torch.rand(2, 4, 4))
    out = pairwise_generalized_box_iou(a, b)
    assert out.shape == (3, 2, 5, 4)
    assert torch.allclose(out[1, 0], pairwise_generalized_box_iou(a[1, 0], b[0]))


def test_degenerate_boxes_stay_finite():
    z = torch.zeros(1, 4)
    assert torch.isfinite(pairwise_generalized_box_iou(z, z)).all()
    assert torch.isfinite(generalized_box_iou(z, z)).all()


def test_inverse_sigmoid():
    x = torch.tensor([0.0, 0.25, 0.5, 1.0])
    y = inverse_sigmoid(x)
    assert torch.isfinite(y).all()
    assert torch.allclose(y[1:3].sigmoid(), x[1:3], atol=1e-6)
