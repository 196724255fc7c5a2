"""Set-prediction losses of the DETR models (DETR, Carion et al. 2020, Eq. 2; with the sigmoid
focal classification loss of Deformable DETR).

For an assignment sigma of queries to objects, with ``n`` the number of objects in the batch
averaged over workers (at least 1):

- ``loss_class = sum_{i,k} focal(logit_ik, [k == class(sigma(i))]) / n`` over *all* queries
  (unassigned queries learn "no object": every class target 0);
- ``loss_bbox = sum_i |b_i - b_sigma(i)|_1 / n`` and ``loss_giou = sum_i (1 - GIoU) / n`` over
  assigned queries.

Every value the criterion returns is already multiplied by its weight in ``weight_dict``.
Loss names: ``loss_{class,bbox,giou}`` for the last decoder layer, ``..._{d}`` for auxiliary
layer d, ``..._enc`` for encoder proposals, ``..._dn`` / ``..._dn_{d}`` for denoising queries.
"""
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from detectron2.utils import comm
from torch import nn

from d2kd.layers import box_cxcywh_to_xyxy, generalized_box_iou, sigmoid_focal_loss

from .matcher import HungarianMatcher, Indices

LOSS_TERMS = ("loss_class", "loss_bbox", "loss_giou")


class SetCriterion(nn.Module):
    """Matching plus focal/L1/GIoU losses for all decoder layers and extra outputs.

    Args:
        num_classes: K.
        matcher: the Hungarian matcher.
        weight_dict: weights of ``loss_class``, ``loss_bbox``, ``loss_giou`` (DINO: 1/5/2;
            Deformable DETR: 2/5/2).
        focal_alpha, focal_gamma: of the focal loss.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: Optional[Mapping[str, float]] = None,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        weights = {"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
        weights.update(weight_dict or {})
        unknown = set(weights) - set(LOSS_TERMS)
        if unknown:
            raise ValueError(f"unknown loss weights {sorted(unknown)}; expected {LOSS_TERMS}")
        self.weight_dict = weights
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @staticmethod
    def num_boxes(targets: Sequence[Dict[str, torch.Tensor]], device=None) -> torch.Tensor:
        """Objects in the batch, averaged across workers and clamped to at least 1 (a 0-d tensor)."""
        device = device if device is not None else targets[0]["boxes"].device
        n = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(n)
            n = n / comm.get_world_size()
        return n.clamp(min=1.0)

    def stack_losses(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        targets: Sequence[Dict[str, torch.Tensor]],
        indices: Sequence[Indices],
        num_boxes,
    ) -> Dict[str, torch.Tensor]:
        """Weighted losses of a stack of predictions under given assignments.

        Args:
            logits: [D, B, N, K]; boxes: [D, B, N, 4] (cxcywh).
            targets: B dicts with ``labels`` [M_b] and ``boxes`` [M_b, 4].
            indices: D lists of B ``(query_idx, gt_idx)`` pairs.
            num_boxes: the normaliser (float or 0-d tensor).

        Returns:
            ``{"loss_class": [D], "loss_bbox": [D], "loss_giou": [D]}``, weighted.
        """
        D, B, N, K = logits.shape
        layer_idx, batch_idx, query_idx, labels, gt_boxes = [], [], [], [], []
        for d in range(D):
            for b, (q, g) in enumerate(indices[d]):
                layer_idx.append(torch.full_like(q, d))
                batch_idx.append(torch.full_like(q, b))
                query_idx.append(q)
                labels.append(targets[b]["labels"][g])
                gt_boxes.append(targets[b]["boxes"][g])
        device = logits.device
        layer_idx = torch.cat(layer_idx).to(device)
        batch_idx = torch.cat(batch_idx).to(device)
        query_idx = torch.cat(query_idx).to(device)
        labels = torch.cat(labels).to(device)
        gt_boxes = torch.cat(gt_boxes).to(device=device, dtype=boxes.dtype)

        onehot = torch.zeros_like(logits)
        onehot[layer_idx, batch_idx, query_idx, labels] = 1.0
        focal = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma)
        loss_class = focal.flatten(1).sum(1) / num_boxes

        matched = boxes[layer_idx, batch_idx, query_idx]
        l1 = (matched - gt_boxes).abs().sum(-1)
        giou = 1 - generalized_box_iou(box_cxcywh_to_xyxy(matched), box_cxcywh_to_xyxy(gt_boxes))
        # per-layer sums; the zero-sized case still yields a graph-connected zero
        loss_bbox = boxes.new_zeros(D).index_add(0, layer_idx, l1) / num_boxes
        loss_giou = boxes.new_zeros(D).index_add(0, layer_idx, giou) / num_boxes
        if not len(layer_idx):
            loss_bbox = loss_bbox + 0.0 * boxes.sum()
            loss_giou = loss_giou + 0.0 * boxes.sum()
        w = self.weight_dict
        return {
            "loss_class": loss_class * w["loss_class"],
            "loss_bbox": loss_bbox * w["loss_bbox"],
            "loss_giou": loss_giou * w["loss_giou"],
        }

    def loss_for_indices(self, logits, boxes, targets, indices: Indices, num_boxes) -> Dict[str, torch.Tensor]:
        """Weighted ``loss_class``/``loss_bbox``/``loss_giou`` (0-d) of one prediction set
        ([B, N, K] logits, [B, N, 4] boxes) under the given assignment (B pairs)."""
        losses = self.stack_losses(logits[None], boxes[None], targets, [indices], num_boxes)
        return {k: v[0] for k, v in losses.items()}

    @staticmethod
    def name_layers(losses: Dict[str, torch.Tensor], suffix: str = "") -> Dict[str, torch.Tensor]:
        """``{"loss_x": [D]}`` -> ``loss_x{suffix}`` for the last layer, ``loss_x{suffix}_{d}`` before."""
        out = {}
        for name, values in losses.items():
            D = values.shape[0]
            for d in range(D - 1):
                out[f"{name}{suffix}_{d}"] = values[d]
            out[f"{name}{suffix}"] = values[D - 1]
        return out

    def forward(self, logits, boxes, targets, suffix: str = "", num_boxes=None):
        """Matches every layer and computes its losses.

        Args:
            logits: [D, B, N, K]; boxes: [D, B, N, 4]; targets: B dicts.
            suffix: inserted after the loss name ("_enc", ...).
            num_boxes: the normaliser; computed from ``targets`` when None.

        Returns:
            ``(losses, indices)``: the named, weighted losses and the D per-layer assignments.
        """
        if num_boxes is None:
            num_boxes = self.num_boxes(targets, logits.device)
        indices = self.matcher.match_stack(logits, boxes, targets)
        losses = self.stack_losses(logits, boxes, targets, indices, num_boxes)
        return self.name_layers(losses, suffix), indices


def zero_losses(anchor: torch.Tensor, names: List[str]) -> Dict[str, torch.Tensor]:
    """Zero losses connected to ``anchor``'s graph, so every iteration logs the same keys and
    every parameter receives a (zero) gradient, as DDP requires."""
    zero = anchor.sum() * 0.0
    return {name: zero for name in names}
