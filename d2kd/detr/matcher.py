"""Hungarian matching of predictions to ground truth (DETR, Carion et al. 2020, Eq. 1).

The cost of assigning prediction i to object j is
``cost_class * focal(i, j) + cost_bbox * |b_i - b_j|_1 + cost_giou * -GIoU(b_i, b_j)``
(the focal class cost of Deformable DETR, boxes as normalised cxcywh). All images -- and, for
:meth:`HungarianMatcher.match_stack`, all decoder layers -- are solved in one call of
:func:`d2kd.ops.batched_linear_sum_assignment`.
"""
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from d2kd.layers import box_cxcywh_to_xyxy, focal_class_cost, pairwise_generalized_box_iou
from d2kd.ops import assignment_to_indices, batched_linear_sum_assignment

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


def pad_targets(targets: Sequence[Dict[str, torch.Tensor]]):
    """Stacks per-image targets.

    Returns:
        ``(labels [B, M], boxes [B, M, 4], num [B])`` with M the largest object count; padded
        entries are label 0 and box (0.5, 0.5, 1, 1).
    """
    num = torch.tensor([len(t["labels"]) for t in targets], dtype=torch.long)
    M = int(num.max()) if len(targets) else 0
    device = targets[0]["boxes"].device
    labels = torch.zeros(len(targets), M, dtype=torch.long, device=device)
    boxes = torch.tensor([0.5, 0.5, 1.0, 1.0], device=device).repeat(len(targets), M, 1)
    for b, t in enumerate(targets):
        labels[b, : len(t["labels"])] = t["labels"]
        boxes[b, : len(t["labels"])] = t["boxes"].to(boxes.dtype)
    return labels, boxes, num.to(device)


class HungarianMatcher(nn.Module):
    """One-to-one matching with focal class, L1 and GIoU costs.

    Args:
        cost_class, cost_bbox, cost_giou: weights of the three costs.
        alpha, gamma: of the focal class cost.
    """

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("all matching costs are zero")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.alpha = alpha
        self.gamma = gamma

    @torch.no_grad()
    def cost_matrix(self, logits: torch.Tensor, boxes: torch.Tensor, targets) -> Tuple[torch.Tensor, torch.Tensor]:
        """Matching costs.

        Args:
            logits: [..., B, N, K]; boxes: [..., B, N, 4] cxcywh; targets: B dicts with
                ``labels`` [M_b] and ``boxes`` [M_b, 4] (normalised cxcywh).

        Returns:
            ``(cost [..., B, N, M], num [B])`` with M = max_b M_b; columns past M_b are 0.
        """
        labels, gt_boxes, num = pad_targets(targets)
        logits, boxes = logits.float(), boxes.float()
        cost = self.cost_class * focal_class_cost(logits, labels, self.alpha, self.gamma)
        cost = cost + self.cost_bbox * torch.cdist(boxes, gt_boxes.expand(*boxes.shape[:-2], -1, -1), p=1)
        giou = pairwise_generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(gt_boxes))
        cost = cost - self.cost_giou * giou
        column = torch.arange(labels.shape[1], device=cost.device)
        return cost.masked_fill(column >= num[:, None, None], 0.0), num

    @torch.no_grad()
    def match_stack(self, logits: torch.Tensor, boxes: torch.Tensor, targets) -> List[Indices]:
        """Matches every layer of a stack in one solver call.

        Args:
            logits: [D, B, N, K]; boxes: [D, B, N, 4].

        Returns:
            D lists (one per layer) of B ``(query_idx, gt_idx)`` pairs, ``query_idx`` ascending.
        """
        D, B, N = logits.shape[:3]
        cost, num = self.cost_matrix(logits, boxes, targets)
        assignment = batched_linear_sum_assignment(cost.flatten(0, 1), num.repeat(D))
        pairs = assignment_to_indices(assignment)
        return [pairs[d * B:(d + 1) * B] for d in range(D)]

    def forward(self, logits: torch.Tensor, boxes: torch.Tensor, targets) -> Indices:
        """logits: [B, N, K], boxes: [B, N, 4] -> B ``(query_idx, gt_idx)`` pairs."""
        return self.match_stack(logits[None], boxes[None], targets)[0]
