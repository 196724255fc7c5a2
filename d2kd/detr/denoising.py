"""DINO's contrastive denoising queries (Zhang et al. 2023, Sec. 3.3; after DN-DETR, Li et al. 2022).

During training, noised copies of the ground-truth boxes are decoded next to the detection
queries and trained to reconstruct the objects. Layout of the "dn" group for a batch whose
largest image has M objects (G = max(1, num_queries // M) groups, 2*G*M queries):

    query g*2M + j       positive copy of object j in group g (box noise < half its size)
    query g*2M + M + j   negative copy of object j (box noise between 1 and 2 half-sizes),
                         trained to predict "no object"

Slots j >= M_b of an image with fewer objects are padding (zero content, degenerate anchor), also
trained as "no object". Each group sees itself and the detection queries, never another group;
the detection queries never see the denoising queries (``group_attention_mask``).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from d2kd.layers import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, inverse_sigmoid

from .matcher import pad_targets
from .queries import QueryGroup


class ContrastiveDenoising(nn.Module):
    """Builds the denoising query group from the ground truth.

    Args:
        num_classes: K; noised labels are embedded by a learned ``[K, C]`` table.
        embed_dim: C.
        num_queries: budget of positive queries per image (groups = num_queries // M); 0 disables.
        label_noise_ratio: a label is replaced by a random class with probability half of this
            (DINO's convention: 0.5 -> 25 %).
        box_noise_scale: corner noise scale, relative to the half width/height.
        name: the group's name; it sees the groups in ``sees`` (the detection queries).
    """

    def __init__(self, num_classes: int, embed_dim: int = 256, num_queries: int = 100,
                 label_noise_ratio: float = 0.5, box_noise_scale: float = 1.0,
                 name: str = "dn", sees: Tuple[str, ...] = ("det",)):
        super().__init__()
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        self.name = name
        self.sees = tuple(sees)
        self.label_embed = nn.Embedding(num_classes, embed_dim)

    def forward(self, targets: Sequence[Dict[str, torch.Tensor]]) -> Optional[Tuple[QueryGroup, dict]]:
        """Noised queries for a batch.

        Returns:
            None when the batch has no object (or ``num_queries`` is 0), else ``(group, meta)``:
            ``group`` has content [B, 2GM, C] and anchors [B, 2GM, 4]; ``meta`` holds
            ``num_groups`` G, ``max_objects`` M, ``negative`` [2GM] bool, and ``indices``: per image
            ``(query_idx, gt_idx)`` of the positive queries (the fixed "matching" of the dn loss).
        """
        labels, boxes, num = pad_targets(targets)
        M = labels.shape[1]
        if M == 0 or self.num_queries <= 0:
            return None
        G = max(1, self.num_queries // M)
        B = len(targets)
        device = labels.device
        slot = torch.arange(2 * G * M, device=device)
        negative = (slot // M) % 2 == 1
        real = (slot % M)[None] < num[:, None]  # [B, 2GM], False on padding slots
        labels = labels.repeat(1, 2 * G)
        boxes = boxes.repeat(1, 2 * G, 1)

        if self.label_noise_ratio > 0:
            flip = torch.rand(labels.shape, device=device) < self.label_noise_ratio * 0.5
            labels = torch.where(flip, torch.randint_like(labels, self.num_classes), labels)
        if self.box_noise_scale > 0:
            half = boxes[..., 2:].repeat(1, 1, 2) / 2  # (w/2, h/2, w/2, h/2)
            magnitude = torch.rand_like(boxes) + negative[None, :, None].to(boxes.dtype)
            sign = torch.randint_like(boxes, 2) * 2 - 1
            corners = box_cxcywh_to_xyxy(boxes) + sign * magnitude * half * self.box_noise_scale
            boxes = box_xyxy_to_cxcywh(corners.clamp(0.0, 1.0))

        content = self.label_embed(labels) * real[..., None].to(self.label_embed.weight.dtype)
        anchors = inverse_sigmoid(boxes * real[..., None].to(boxes.dtype))
        block = slot // (2 * M)
        internal_mask = block[:, None] != block[None, :]
        indices: List[Tuple[torch.Tensor, torch.Tensor]] = []
        for n in num.tolist():
            gt = torch.arange(n, device=device)
            starts = torch.arange(G, device=device) * 2 * M
            indices.append(((starts[:, None] + gt[None]).flatten(), gt.repeat(G)))
        group = QueryGroup(self.name, content, anchors, internal_mask=internal_mask, sees=self.sees)
        meta = {"num_groups": G, "max_objects": M, "negative": negative, "indices": indices}
        return group, meta
