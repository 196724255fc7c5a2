"""Sigmoid focal loss (Lin et al. 2017, Eq. 5), the matching cost derived from it, and the
classifier bias initialisation that goes with it."""
import math

import torch
import torch.nn.functional as F


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Element-wise focal loss ``-alpha_t (1 - p_t)^gamma log(p_t)``, not reduced.

    Args:
        logits: [...] raw scores.
        targets: [...] same shape, in [0, 1] (one-hot class targets).
        alpha: weight of positives (negatives get ``1 - alpha``); a negative value disables it.
        gamma: focusing exponent.

    Returns:
        [...] the loss of every element.
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def focal_class_cost(
    logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Focal matching cost of assigning each prediction to each ground-truth label.

    The cost is the focal loss of predicting the label as positive minus that of predicting it
    as negative (Deformable DETR's matcher), so it only ranks predictions by the label's score.

    Args:
        logits: [..., N, K] class logits.
        labels: [..., M] int64 ground-truth classes (leading dims broadcast with ``logits``').

    Returns:
        [..., N, M].
    """
    prob = logits.sigmoid()
    index = labels[..., None, :].expand(*prob.shape[:-1], labels.shape[-1])
    p = prob.gather(-1, index)
    pos = alpha * (1 - p) ** gamma * -(p + 1e-8).log()
    neg = (1 - alpha) * p ** gamma * -(1 - p + 1e-8).log()
    return pos - neg


def prior_bias(prior_prob: float = 0.01) -> float:
    """Bias giving every class the initial probability ``prior_prob`` (Lin et al. 2017, Sec. 4.1),
    so the many negatives do not swamp the first iterations of a focal-loss classifier."""
    return -math.log((1 - prior_prob) / prior_prob)
