"""Sigmoid focal loss (Lin et al. 2017, Eq. 5) against a hand computation."""
import math

import torch

from d2kd.layers import focal_class_cost, sigmoid_focal_loss


def test_focal_loss_by_hand():
    logits = torch.tensor([0.0, 2.0, -1.0])
    targets = torch.tensor([1.0, 0.0, 1.0])
    loss = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0)
    p = [0.5, 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(1))]
    expected = [
        0.25 * (1 - p[0]) ** 2 * -math.log(p[0]),
        0.75 * p[1] ** 2 * -math.log(1 - p[1]),
        0.25 * (1 - p[2]) ** 2 * -math.log(p[2]),
    ]
    assert torch.allclose(loss, torch.tensor(expected), atol=1e-6)


def test_gamma_zero_no_alpha_is_bce():
    logits, targets = torch.randn(10), (torch.rand(10) > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    assert torch.allclose(sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0.0), bce, atol=1e-6)


def test_class_cost_is_pos_minus_neg_loss():
    logits = torch.randn(1, 3, 5)
    labels = torch.tensor([[4, 0]])
    cost = focal_class_cost(logits, labels)
    assert cost.shape == (1, 3, 2)
    pos = sigmoid_focal_loss(logits[0, 1, 4], torch.tensor(1.0))
    neg = sigmoid_focal_loss(logits[0, 1, 4], torch.tensor(0.0))
    assert torch.allclose(cost[0, 1, 0], pos - neg, atol=1e-5)
