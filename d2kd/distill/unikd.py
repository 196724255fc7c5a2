"""UniKD (Lao et al., ICCV 2023): universal knowledge distillation through Adaptive Knowledge
Extractors (AKEs), for any teacher/student pair (DETRs, Faster R-CNN, RetinaNet, FCOS).

Two stages (paper Sec. 3.2, Fig. 2), each a normal ``train_net.py`` run:

1. **absorbing** (Sec. 3.2.2, Eq. 6): :class:`~d2kd.meta_arch.UniKDAbsorb` (in
   ``d2kd/meta_arch/unikd_absorb.py``: a meta-architecture, above the methods), trains
   the two AKEs on the frozen teacher's multi-scale features with DETR-style losses. The student
   is not involved; the checkpoint holds the AKEs (and their FFN heads) only, as ``ake.*``.
2. **injecting** (Sec. 3.2.3, Eq. 7-8): :class:`UniKD`, a :class:`DistillLoss` for
   ``HeteroDistill`` / ``DistillDETR``, loads the AKEs frozen (:class:`FrozenAKE`), generates the
   queries from the *teacher's* features, and trains the student (through the adaptor phi) so
   that the same extractors give the same knowledge embeddings on its features.

Architecture (Eq. 2-5). An AKE is a query generator (f_ct or f_pos) and an extractor f_e, each
one post-norm deformable decoder layer (:class:`~d2kd.layers.DeformableDecoderLayer`: query
self-attention, multi-scale deformable cross-attention, FFN), plus an FFN head (class logits and a
box). The two AKEs have the same structure and separate weights. N queries of width C; C and the
number of levels are the teacher's (its ``DetectorView.features``: the FPN of a detectron2
detector, the encoder output of a DETR, as the paper does for Deformable DETR). With
Deformable DETR's layer sizes (8 heads, 4 points, FFN 1024) the two AKEs have 4.4M parameters
at C = 256, 4 levels, N = 200, 80 classes. The paper gives "the total parameter in AKE" as 1.56M
(Sec. 3.2.1) without the layer sizes; we read it as one AKE (generator + extractor + head):
``PAPER_SIZED_AKE`` (FFN 384) gives 1.59M for AKE_ct and 1.54M for AKE_pos (mean 1.56M), and
``configs/unikd/dino_R50_absorb_paper_sized.py`` uses it. The count is logged at construction.

- ``AKE_ct``: E (a learned [N, C] embedding) -> q_ct = f_ct(E, F^T) -> z_ct = f_e(q_ct, F*).
- ``AKE_pos``: boxes B^ [N, 4] -> E' = FC(B^) (one linear layer) -> q_pos = f_pos(E', F^T) ->
  z_pos = f_e(q_pos, F*).

Choices where the paper leaves room (documented here once):

- *Reference points.* AKE_pos attends with its boxes B^ as deformable-attention reference boxes
  (sampling relative to the box size) in both f_pos and f_e. AKE_ct has no boxes: f_ct uses the
  point ``sigmoid(Linear(E))`` (Deformable DETR's learned reference points) and f_e the point
  ``sigmoid(Linear'(q_ct))``, i.e. the generated, image-dependent query decides where the
  extractor looks. Positional embeddings of the queries are not added (the box/point enters
  through the reference and, for AKE_pos, through E' itself). Its FFN box is predicted relative
  to the reference (Deformable DETR: ``sigmoid(delta + inverse_sigmoid(ref))``, centre only for
  points).
- *Boxes B^ (Eq. 3).* One jittered box per ground truth with IoU > alpha (0.6) with it (rejection
  sampling; the ground truth itself if no candidate passes), then background boxes sampled
  around random ground truths (shifted by up to 1.5 box sizes, scaled by ``e^U(-1,1)``) whose
  largest IoU with every ground truth is < beta (0.4), until there are N. Images without ground
  truth get N background boxes drawn uniformly over the image. With more than N ground truths a
  random subset of N is kept (all N boxes positive, no background). Should rejection not fill the set, tiny boxes (area < 0.3x the smallest
  ground truth, so their IoU with any ground truth is < beta by construction) complete it.
  Boxes are normalised cxcywh of the unpadded input, clipped to the image; sampling runs on the
  CPU (a few hundred boxes).
- *Stage-1 losses (Eq. 6).* Deformable DETR's set losses (:class:`~d2kd.detr.SetCriterion`,
  focal class loss, L1 and GIoU, weights 2/5/2). The content AKE is matched to the ground truth
  by the Hungarian matcher; the positional AKE uses the known assignment sigma(i) = i (positives:
  the jittered boxes, each to its own ground truth; negatives: the background boxes). Box terms
  are divided by the number of positives N' as in Eq. 6; the class term is the focal loss summed
  over the N queries and divided by N' too (Deformable DETR's normalisation, which the paper
  says it follows for AKE pre-training) rather than Eq. 6's literal 1/N, which would make it
  ~N/N' times weaker.
- *Level alignment.* The student's pyramid is brought to the teacher's strides before phi: a
  teacher level the student has is taken as is; a coarser one is max-pooled (kernel = stride =
  the ratio) from the student's closest finer level (as detectron2's P6 is pooled from P5); one
  finer than every student level is bilinearly upsampled from the student's finest (e.g.
  Faster R-CNN's P2 for a RetinaNet student). Student levels the teacher lacks (RetinaNet's P7
  for a Faster R-CNN teacher) are not used. Dropping a teacher level instead would change the
  AKEs, whose attention was trained over all of the teacher's levels.
- *Adaptor phi.* One linear layer (1x1 conv) from the student's width to the teacher's, shared by
  the levels, then ``adaptor_layers`` (2, Tab. 6g) deformable self-attention encoder layers
  (:class:`~d2kd.layers.DeformableEncoderLayer`, sine position + learned level embeddings)
  over the aligned pyramid; no dropout by default (its output is regressed).
- *Eq. 8.* MSE per query is the mean over the C channels; the two means (over P and over N)
  are computed per image and averaged over the batch; an empty set contributes 0. For z_ct, P
  is the set of queries the Hungarian matcher assigns when the *teacher-side* predictions
  FFN(z_ct^T) are matched to the ground truth; for z_pos it is the jittered boxes.
- *Frozen AKEs in stage 2.* :class:`FrozenAKE` loads the stage-1 checkpoint strictly (clear
  errors), sets ``requires_grad=False`` and eval mode for good; :class:`UniKD` holds it
  *unregistered* (like the distiller's teacher): not in ``parameters()``, ``state_dict()``, the
  optimizer or DDP, yet it follows ``.to()``. The student's embeddings flow through the frozen
  f_e to the adaptor and the student; q, references and z^T are computed under ``no_grad``.

Offline distillation (``export_knowledge``): per image, the tensors below (N queries, C = the
teacher's width); training from them needs no teacher and gives the online loss exactly (the
same B^ is part of the knowledge):

    q_ct [N, C], ref_ct [N, 2], z_ct [N, C], positive_ct [N] bool,
    q_pos [N, C], boxes [N, 4] (B^, also q_pos's reference boxes), z_pos [N, C], positive_pos [N] bool

Every float is bounded (z and q are LayerNorm outputs, boxes/points in [0, 1]), so a store may
keep them in float16: 4NC + 6N values + 2N bytes, 412,400 bytes per image for N=200, C=256.
"""
import logging
import math
import os
from dataclasses import dataclass, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from d2kd.detr.matcher import HungarianMatcher
from d2kd.detr.transformer import encoder_reference_points
from d2kd.layers import (
    MLP,
    DeformableDecoderLayer,
    DeformableEncoderLayer,
    PositionEmbeddingSine,
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    inverse_sigmoid,
    pairwise_box_iou,
    prior_bias,
)

from .base import DistillLoss, DistillStep
from .frozen import TeacherCheckpointError, check_state_dict_fits
from .levels import valid_mask

logger = logging.getLogger(__name__)

KNOWLEDGE_KEYS = ("q_ct", "ref_ct", "z_ct", "positive_ct", "q_pos", "boxes", "z_pos", "positive_pos")
PAPER_REPORTED_PARAMETERS = 1.56e6  # Sec. 3.2.1, read as one AKE (module doc)
# AKEPair layer sizes closest to the paper's parameter count (module doc): L(AKEPair)(**PAPER_SIZED_AKE, ...)
PAPER_SIZED_AKE = dict(num_heads=8, num_points=4, ffn_dim=384)
AKE_PREFIX = "ake."


# --------------------------------------------------------------------------- feature pyramids
@dataclass
class Pyramid:
    """Multi-scale features flattened for deformable attention.

    Attributes:
        value: [B, S, C] tokens of all levels, finest first (``S = sum_l H_l W_l``).
        spatial_shapes: [L, 2] int64 (H_l, W_l); level_start_index: [L] int64.
        padding_mask: [B, S] bool, True on cells that lie wholly in the padding.
        valid_ratios: [B, L, 2] (w, h) fraction of each level covering the image.
        level_masks: per level [B, H_l, W_l], the padding mask unflattened.
    """

    value: torch.Tensor
    spatial_shapes: torch.Tensor
    level_start_index: torch.Tensor
    padding_mask: torch.Tensor
    valid_ratios: torch.Tensor
    level_masks: List[torch.Tensor]

    def scale(self, ref: torch.Tensor) -> torch.Tensor:
        """[B, N, 2] points or [B, N, 4] boxes normalised to the image -> [B, N, L, 2|4] on
        each padded level (what deformable attention takes)."""
        ratios = self.valid_ratios if ref.shape[-1] == 2 else torch.cat([self.valid_ratios] * 2, dim=-1)
        return ref[:, :, None] * ratios[:, None]


def flatten_pyramid(features: Sequence[torch.Tensor], strides: Sequence[int],
                    image_sizes: Sequence[Tuple[int, int]]) -> Pyramid:
    """Flattens ``features`` (per level [B, C, H_l, W_l]) with padding masks from the unpadded
    ``image_sizes`` (h, w) and each level's stride: a cell is valid when it starts inside the image."""
    values, masks, ratios, shapes = [], [], [], []
    for feat, stride in zip(features, strides):
        H, W = feat.shape[-2:]
        valid = valid_mask(image_sizes, stride, (H, W), feat.device)[:, 0] > 0  # [B, H, W]
        ratios.append(torch.stack([valid[:, 0, :].sum(1) / W, valid[:, :, 0].sum(1) / H], -1).to(feat.dtype))
        masks.append(~valid)
        values.append(feat.flatten(2).transpose(1, 2))
        shapes.append((H, W))
    spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=features[0].device)
    starts = torch.cat([spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]])
    return Pyramid(torch.cat(values, 1), spatial_shapes, starts, torch.cat([m.flatten(1) for m in masks], 1),
                   torch.stack(ratios, 1), masks)


def align_levels(teacher_strides: Sequence[int], student_strides: Sequence[int]) -> List[Tuple[int, int]]:
    """How each teacher level is made from the student's pyramid (module doc, level alignment).

    Returns:
        per teacher level ``(student_level, factor)``: ``factor == 1`` the same stride, ``> 1``
        max-pool the student level by ``factor``, ``< 0`` upsample it by ``-factor``.

    Raises ValueError when a stride ratio is not an integer.
    """
    plan = []
    for s in teacher_strides:
        finer = [j for j, t in enumerate(student_strides) if t <= s]
        if finer:
            j = max(finer, key=lambda k: student_strides[k])
            ratio = s / student_strides[j]
            sign = 1
        else:
            j = min(range(len(student_strides)), key=lambda k: student_strides[k])
            ratio = student_strides[j] / s
            sign = -1
        if ratio != int(ratio):
            raise ValueError(f"cannot derive the teacher's stride-{s} level from student strides "
                             f"{list(student_strides)}: stride ratios must be integers")
        plan.append((j, 1 if ratio == 1 else sign * int(ratio)))
    return plan


def resample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Applies one :func:`align_levels` factor to a [B, C, H, W] map."""
    if factor == 1:
        return x
    if factor > 1:
        return F.max_pool2d(x, kernel_size=factor, stride=factor, ceil_mode=True)
    return F.interpolate(x, scale_factor=float(-factor), mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- boxes B^ (Eq. 3)
def _clip(boxes: torch.Tensor) -> torch.Tensor:
    """cxcywh boxes clipped to the unit image."""
    return box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes).clamp(0.0, 1.0))


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[..., N, 4] x [M, 4] cxcywh -> [..., N, M] IoU."""
    return pairwise_box_iou(box_cxcywh_to_xyxy(a), box_cxcywh_to_xyxy(b))[0]


def jitter_boxes(gt: torch.Tensor, alpha: float = 0.6, generator: Optional[torch.Generator] = None,
                 scale: float = 0.25, tries: int = 10) -> torch.Tensor:
    """One jittered copy of each box with IoU > ``alpha`` with it (Eq. 3, first case).

    Candidates shift the centre by up to ``scale`` of the box size and scale w and h by
    ``e^U(-scale, scale)``, clipped to the image; the first of ``tries`` that passes is kept, the
    box itself when none does. gt: [M, 4] cxcywh (CPU) -> [M, 4].
    """
    M = gt.shape[0]
    if M == 0:
        return gt.clone()
    u = torch.rand(tries, M, 4, generator=generator) * 2 - 1
    cand = torch.stack([gt[:, 0] + scale * u[..., 0] * gt[:, 2], gt[:, 1] + scale * u[..., 1] * gt[:, 3],
                        gt[:, 2] * (scale * u[..., 2]).exp(), gt[:, 3] * (scale * u[..., 3]).exp()], dim=-1)
    cand = _clip(cand)
    iou = torch.diagonal(_iou(cand, gt), dim1=-2, dim2=-1)  # [tries, M]: candidate m vs box m
    ok = iou > alpha
    first = ok.to(torch.uint8).argmax(0)
    chosen = cand[first, torch.arange(M)]
    return torch.where(ok.any(0)[:, None], chosen, gt)


def sample_background(gt: torch.Tensor, num: int, beta: float = 0.4, generator: Optional[torch.Generator] = None,
                      rounds: int = 10, min_size: float = 1e-3) -> torch.Tensor:
    """``num`` boxes whose largest IoU with every box of ``gt`` is < ``beta`` (Eq. 3, second case).

    Sampled around random ground truths (uniformly over the image when there is none) and
    filtered, for up to ``rounds`` batches; tiny boxes complete the set if needed (module doc).
    gt: [M, 4] cxcywh (CPU) -> [num, 4].
    """
    M = gt.shape[0]
    kept, have = [], 0
    for _ in range(rounds):
        if have >= num:
            break
        k = max(2 * (num - have), 16)
        u = torch.rand(k, 4, generator=generator)
        if M:
            g = gt[torch.randint(M, (k,), generator=generator)]
            cand = torch.stack([g[:, 0] + (3 * u[:, 0] - 1.5) * g[:, 2], g[:, 1] + (3 * u[:, 1] - 1.5) * g[:, 3],
                                g[:, 2] * (2 * u[:, 2] - 1).exp(), g[:, 3] * (2 * u[:, 3] - 1).exp()], dim=-1)
        else:
            cand = torch.cat([u[:, :2], 0.05 + 0.45 * u[:, 2:]], dim=-1)
        cand = _clip(cand)
        ok = (cand[:, 2:] >= min_size).all(-1)
        if M:
            ok &= _iou(cand, gt).max(-1).values < beta
        kept.append(cand[ok])
        have += int(ok.sum())
    if have < num:
        areas = gt[:, 2] * gt[:, 3]
        areas = areas[areas > 0]
        side = math.sqrt(0.3 * float(areas.min())) if len(areas) else 0.1
        side = min(side, 0.5)
        centre = side / 2 + (1 - side) * torch.rand(num - have, 2, generator=generator)
        kept.append(torch.cat([centre, torch.full_like(centre, side)], dim=-1))
    return torch.cat(kept)[:num] if kept else gt.new_zeros(0, 4)


def sample_positional_boxes(gt: torch.Tensor, num_boxes: int, alpha: float = 0.6, beta: float = 0.4,
                            generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """B^ of one image (Eq. 3): jittered ground truths first, then background boxes.

    Args:
        gt: [M, 4] normalised cxcywh ground-truth boxes (any device).
        num_boxes: N.

    Returns:
        ``(boxes [N, 4], gt_index [N'])`` on ``gt``'s device: box i < N' is the jittered copy of
        ground truth ``gt_index[i]``; N' = min(M, N) (a random subset when M > N).
    """
    device = gt.device
    gt = gt.detach().float().cpu()
    M = gt.shape[0]
    if M > num_boxes:
        gt_index = torch.randperm(M, generator=generator)[:num_boxes].sort().values
    else:
        gt_index = torch.arange(M)
    positives = jitter_boxes(gt[gt_index], alpha, generator)
    negatives = sample_background(gt, num_boxes - len(gt_index), beta, generator)
    return torch.cat([positives, negatives]).to(device), gt_index.to(device)


# --------------------------------------------------------------------------- the AKEs
class AKE(nn.Module):
    """One Adaptive Knowledge Extractor: query generator, extractor f_e and FFN head (Eq. 2, 4, 5).

    Args:
        positional: AKE_pos (queries from boxes, ``E' = FC(B^)``) or AKE_ct (learned E).
        embed_dim: C (the teacher's feature width); num_levels: the teacher's level count.
        num_queries: N (the size of E for AKE_ct).
        num_classes: K of the class head.
        num_heads, num_points, ffn_dim, dropout: of the two decoder layers.
    """

    def __init__(self, *, positional: bool, embed_dim: int, num_levels: int, num_queries: int, num_classes: int,
                 num_heads: int = 8, num_points: int = 4, ffn_dim: int = 1024, dropout: float = 0.1):
        super().__init__()
        self.positional = positional
        if positional:
            self.box_embed = nn.Linear(4, embed_dim)  # E' = FC(B^)
        else:
            self.query_embed = nn.Embedding(num_queries, embed_dim)  # E
            self.generator_ref = nn.Linear(embed_dim, 2)
            self.extractor_ref = nn.Linear(embed_dim, 2)
            for ref in (self.generator_ref, self.extractor_ref):
                nn.init.xavier_uniform_(ref.weight)
                nn.init.zeros_(ref.bias)
        self.generator = DeformableDecoderLayer(embed_dim, num_heads, num_levels, num_points, ffn_dim, dropout)
        self.extractor = DeformableDecoderLayer(embed_dim, num_heads, num_levels, num_points, ffn_dim, dropout)
        self.class_head = nn.Linear(embed_dim, num_classes)
        self.box_head = MLP(embed_dim, embed_dim, 4, 3)
        nn.init.constant_(self.class_head.bias, prior_bias(0.01))
        nn.init.zeros_(self.box_head.layers[-1].weight)  # start at the reference box / point
        nn.init.zeros_(self.box_head.layers[-1].bias)

    def num_parameters(self, heads: bool = True) -> int:
        """Parameters of this AKE; ``heads=False`` leaves out the stage-1 class/box heads."""
        total = sum(p.numel() for p in self.parameters())
        if not heads:
            total -= sum(p.numel() for m in (self.class_head, self.box_head) for p in m.parameters())
        return total

    @staticmethod
    def _attend(layer: DeformableDecoderLayer, content: torch.Tensor, ref: torch.Tensor, pyr: Pyramid):
        return layer(content, torch.zeros_like(content), pyr.scale(ref), pyr.value, pyr.spatial_shapes,
                     pyr.level_start_index, pyr.padding_mask)

    def generate(self, pyr: Pyramid, boxes: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Eq. 4 on the teacher's pyramid: ``(q [B, N, C], reference)`` where the reference f_e
        uses is ``boxes`` [B, N, 4] (AKE_pos) or a point [B, N, 2] predicted from q (AKE_ct)."""
        if self.positional:
            q = self._attend(self.generator, self.box_embed(boxes), boxes, pyr)
            return q, boxes
        E = self.query_embed.weight[None].expand(pyr.value.shape[0], -1, -1)
        q = self._attend(self.generator, E, self.generator_ref(E).sigmoid(), pyr)
        return q, self.extractor_ref(q).sigmoid()

    def extract(self, q: torch.Tensor, ref: torch.Tensor, pyr: Pyramid) -> torch.Tensor:
        """Eq. 5: z = f_e(q, F*), [B, N, C]; ``pyr`` is the teacher's or phi(student's)."""
        return self._attend(self.extractor, q, ref, pyr)

    def predict(self, z: torch.Tensor, ref: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """FFN(z): ``(logits [B, N, K], boxes [B, N, 4] cxcywh)``, boxes relative to ``ref``."""
        delta = self.box_head(z)
        if ref.shape[-1] == 2:
            delta = torch.cat([delta[..., :2] + inverse_sigmoid(ref), delta[..., 2:]], dim=-1)
        else:
            delta = delta + inverse_sigmoid(ref)
        return self.class_head(z), delta.sigmoid()


class AKEPair(nn.Module):
    """AKE_ct and AKE_pos for one teacher, plus the box sampling of Eq. 3.

    Args:
        embed_dim: C, the teacher's feature width (FPN channels, or a DETR's ``embed_dim``).
        strides: the teacher's feature strides, finest first (checked against its features and
            stored in the checkpoint, so stage 2 detects an AKE trained on another pyramid).
        num_classes: K (the teacher's).
        num_queries: N (200 in the paper, Tab. 6c).
        num_heads, num_points, ffn_dim, dropout: of every AKE layer (Deformable DETR's defaults).
        alpha, beta: IoU bounds of the jittered / background boxes (Eq. 3).
    """

    def __init__(self, *, embed_dim: int = 256, strides: Sequence[int] = (8, 16, 32, 64), num_classes: int = 80,
                 num_queries: int = 200, num_heads: int = 8, num_points: int = 4, ffn_dim: int = 1024,
                 dropout: float = 0.1, alpha: float = 0.6, beta: float = 0.4):
        super().__init__()
        if not 0 < beta <= alpha < 1:
            raise ValueError(f"need 0 < beta <= alpha < 1, got alpha={alpha}, beta={beta}")
        self.register_buffer("strides", torch.tensor(list(strides), dtype=torch.long))
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.alpha = alpha
        self.beta = beta
        kw = dict(embed_dim=embed_dim, num_levels=len(strides), num_queries=num_queries, num_classes=num_classes,
                  num_heads=num_heads, num_points=num_points, ffn_dim=ffn_dim, dropout=dropout)
        self.ct = AKE(positional=False, **kw)
        self.pos = AKE(positional=True, **kw)
        ct, pos = self.ct.num_parameters(), self.pos.num_parameters()
        logger.info("UniKD AKEs: AKE_ct %.2fM, AKE_pos %.2fM parameters, %.2fM together (%.2fM without the FFN "
                    "heads; the paper reports %.2fM per AKE)", ct / 1e6, pos / 1e6, (ct + pos) / 1e6,
                    self.num_parameters(heads=False) / 1e6, PAPER_REPORTED_PARAMETERS / 1e6)

    def num_parameters(self, heads: bool = True) -> int:
        """Parameters of both AKEs; ``heads=False`` leaves out the stage-1 class/box heads."""
        return self.ct.num_parameters(heads) + self.pos.num_parameters(heads)

    @property
    def stride_list(self) -> List[int]:
        return [int(s) for s in self.strides.tolist()]

    def teacher_pyramid(self, view) -> Pyramid:
        """The teacher view's features flattened, after checking they are what the AKEs expect."""
        strides = self.stride_list
        if list(view.strides) != strides:
            raise ValueError(
                f"the UniKD AKEs were built for teacher feature strides {strides}, but the teacher "
                f"({type(view.model).__name__}) gives strides {list(view.strides)}: set the AKE's "
                "strides to the teacher's (and use a stage-1 checkpoint trained on this teacher)"
            )
        width = view.features[0].shape[1]
        if width != self.embed_dim:
            raise ValueError(f"the UniKD AKEs have width {self.embed_dim} but the teacher's features have "
                             f"{width} channels: set the AKE's embed_dim to the teacher's width")
        dtype = self.ct.class_head.weight.dtype
        return flatten_pyramid([f.to(dtype) for f in view.features], strides, view.images.image_sizes)

    def sample_boxes(self, targets: Sequence[Dict[str, torch.Tensor]], generator: Optional[torch.Generator] = None):
        """B^ for a batch: ``(boxes [B, N, 4], positive [B, N] bool, gt_index: B tensors [N'_b])``."""
        boxes, positive, gt_index = [], [], []
        for t in targets:
            b, g = sample_positional_boxes(t["boxes"], self.num_queries, self.alpha, self.beta, generator)
            mask = torch.zeros(self.num_queries, dtype=torch.bool, device=b.device)
            mask[: len(g)] = True
            boxes.append(b)
            positive.append(mask)
            gt_index.append(g)
        return torch.stack(boxes), torch.stack(positive), gt_index


def matched_mask(indices: Sequence[Tuple[torch.Tensor, torch.Tensor]], num_queries: int, device) -> torch.Tensor:
    """DETR index pairs -> [B, N] bool, True on the queries assigned to a ground truth."""
    mask = torch.zeros(len(indices), num_queries, dtype=torch.bool, device=device)
    for b, (q, _) in enumerate(indices):
        mask[b, q.to(device)] = True
    return mask


# --------------------------------------------------------------------------- Eq. 8
def decoupled_mse(z_s: torch.Tensor, z_t: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """D(z^S, z^T) of Eq. 8, averaged over the batch (0-d).

    ``D = 1/N' sum_{i in P} MSE(z^S_i, z^T_i) + 1/(N - N') sum_{i in N} MSE(z^S_i, z^T_i)``, MSE
    being the mean over the C channels; an empty P or N contributes 0.

    Args:
        z_s, z_t: [B, N, C]; positive: [B, N] bool (P).
    """
    err = (z_s - z_t.to(z_s.dtype)).pow(2).mean(-1)
    pos = positive.to(err.dtype)
    neg = 1.0 - pos
    per_image = (err * pos).sum(1) / pos.sum(1).clamp(min=1) + (err * neg).sum(1) / neg.sum(1).clamp(min=1)
    return per_image.mean()


# --------------------------------------------------------------------------- adaptor phi
class Adaptor(nn.Module):
    """phi: the student's pyramid (aligned to the teacher's levels) to the teacher's width, then
    deformable self-attention over all levels (Sec. 3.2.3, Tab. 6g).

    Args:
        student_channels: width of the student's features.
        embed_dim: the teacher's width C; num_levels: the teacher's level count.
        num_layers: deformable self-attention layers (2 in the paper).
        num_heads, num_points, ffn_dim, dropout: of those layers.
    """

    def __init__(self, student_channels: int, embed_dim: int, num_levels: int, num_layers: int = 2,
                 num_heads: int = 8, num_points: int = 4, ffn_dim: int = 1024, dropout: float = 0.0):
        super().__init__()
        self.proj = nn.Linear(student_channels, embed_dim)
        if num_layers:  # (with none, a level embedding would be a parameter without gradient)
            self.level_embed = nn.Parameter(torch.empty(num_levels, embed_dim))
            nn.init.normal_(self.level_embed)
            self.position = PositionEmbeddingSine(embed_dim, temperature=10000.0, normalize=True, offset=-0.5)
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(embed_dim, num_heads, num_levels, num_points, ffn_dim, dropout)
            for _ in range(num_layers)
        )

    def forward(self, features: Sequence[torch.Tensor], strides: Sequence[int],
                image_sizes: Sequence[Tuple[int, int]]) -> Pyramid:
        """features: per teacher level [B, C_S, H_l, W_l] (aligned) -> the flattened [B, S, C] pyramid."""
        pyr = flatten_pyramid(features, strides, image_sizes)
        tokens = self.proj(pyr.value)
        if not self.layers:
            return replace(pyr, value=tokens)
        pos = torch.cat([(self.position(m).to(tokens.dtype) + self.level_embed[lvl].view(1, -1, 1, 1))
                         .flatten(2).transpose(1, 2) for lvl, m in enumerate(pyr.level_masks)], dim=1)
        ref = encoder_reference_points(pyr.spatial_shapes, pyr.valid_ratios)
        for layer in self.layers:
            tokens = layer(tokens, pos, ref, pyr.spatial_shapes, pyr.level_start_index, pyr.padding_mask)
        return replace(pyr, value=tokens)


# --------------------------------------------------------------------------- frozen AKEs
class AKECheckpointError(RuntimeError):
    """The stage-1 (UniKDAbsorb) checkpoint is missing, unreadable or does not fit the AKE config."""


def read_ake_state(path: str) -> Dict[str, torch.Tensor]:
    """The ``ake.*`` weights of a UniKDAbsorb checkpoint, prefix removed."""
    if not os.path.isfile(path):
        raise AKECheckpointError(
            f"UniKD AKE checkpoint not found: {path!r}. Train the AKEs first (stage 1, a configs/unikd/"
            "*_absorb*.py run) and point model.losses.<name>.ake.weights at its model_final.pth"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise AKECheckpointError(f"cannot read UniKD AKE checkpoint {path!r}: {e}") from e
    if isinstance(data, Mapping) and "model" in data:
        data = data["model"]
    if not isinstance(data, Mapping):
        raise AKECheckpointError(f"UniKD AKE checkpoint {path!r} holds no state dict")
    for prefix in (AKE_PREFIX, "module." + AKE_PREFIX):
        state = {k[len(prefix):]: v for k, v in data.items() if k.startswith(prefix)}
        if state:
            return state
    some = ", ".join(sorted(data)[:3])
    raise AKECheckpointError(f"{path!r} holds no 'ake.*' weights (keys like {some}): it is not the "
                             "checkpoint of a UniKD stage-1 (UniKDAbsorb) run")


class FrozenAKE(nn.Module):
    """The AKEs of stage 2: loaded from the stage-1 checkpoint and frozen for good.

    Args:
        ake: the AKEs, built with the same arguments as in stage 1.
        weights: the stage-1 checkpoint (``model_final.pth`` of a :class:`UniKDAbsorb` run).
            Required, unless ``allow_uninitialized`` (smoke tests only: random AKEs).
        allow_uninitialized: accept ``weights=""`` and keep the random initialisation.
    """

    def __init__(self, ake: AKEPair, weights: str = "", *, allow_uninitialized: bool = False):
        super().__init__()
        if not isinstance(ake, AKEPair):
            raise TypeError(f"ake must be an AKEPair, got {type(ake).__name__}")
        self.ake = ake
        self.weights = weights
        if weights:
            state = read_ake_state(weights)
            try:
                check_state_dict_fits(state, ake, weights, what="UniKD AKE")
            except TeacherCheckpointError as e:
                raise AKECheckpointError(f"{e}\n  (build the stage-2 AKE with the arguments of the stage-1 "
                                         "config: import its `ake`)") from e
            ake.load_state_dict(state, strict=True)
            logger.info("Loaded UniKD AKEs from %s", weights)
        elif not allow_uninitialized:
            raise AKECheckpointError(
                "no UniKD AKE checkpoint given: set model.losses.<name>.ake.weights to the model_final.pth "
                "of the stage-1 (UniKDAbsorb) run (allow_uninitialized=True skips this for smoke tests)"
            )
        else:
            logger.warning("UniKD AKEs run with random weights (allow_uninitialized=True)")
        for p in self.ake.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True):
        """The AKEs stay in eval mode (no dropout) whatever the caller asks."""
        return super().train(False)


# --------------------------------------------------------------------------- stage 2
class UniKD(DistillLoss):
    """UniKD's injecting stage (Eq. 7): ``lambda_ct D(z_ct^S, z_ct^T) + lambda_pos D(z_pos^S, z_pos^T)``.

    Queries always come from the teacher's features (q_ct = f_ct(E, F^T), q_pos = f_pos(E', F^T));
    z^T = f_e(q, F^T) and z^S = f_e(q, phi(F^S)) with the frozen stage-1 AKEs. Only the adaptor
    phi (and, through it, the student) is trained. Logged as ``loss_kd_unikd_ct`` and
    ``loss_kd_unikd_pos``. Design choices: see the module docstring.

    Args:
        ake: the frozen stage-1 AKEs (:class:`FrozenAKE`).
        student_channels: width of the student's features (FPN channels or DETR ``embed_dim``).
        name: this method's key in the distiller's ``losses`` (offline knowledge is read from
            ``step.knowledge[b][name]``; also its ``step.cache`` key).
        lambda_ct, lambda_pos: lambda_1 and lambda_2 of Eq. 7 (10 and 10, Tab. 6e).
        adaptor_layers, adaptor_heads, adaptor_points, adaptor_ffn_dim, adaptor_dropout: phi.
        matcher: matches FFN(z_ct^T) to the ground truth (P/N of the content queries);
            Deformable DETR's 2/5/2 Hungarian matcher by default.
    """

    supports_offline = True
    # What the stored knowledge depends on (the store identity): the frozen AKEs (config and
    # checkpoint) and the matcher that marks P of the content queries. Student-side settings
    # (student_channels, the adaptor) and the loss weights are not: one store serves any student.
    knowledge_args = ("ake", "matcher")

    def __init__(self, *, ake: FrozenAKE, student_channels: int, name: str = "unikd", lambda_ct: float = 10.0,
                 lambda_pos: float = 10.0, adaptor_layers: int = 2, adaptor_heads: int = 8, adaptor_points: int = 4,
                 adaptor_ffn_dim: int = 1024, adaptor_dropout: float = 0.0,
                 matcher: Optional[HungarianMatcher] = None):
        super().__init__()
        if not isinstance(ake, FrozenAKE):
            raise TypeError(f"UniKD needs a FrozenAKE (L(FrozenAKE)(ake=..., weights=...)), got {type(ake).__name__}")
        object.__setattr__(self, "_frozen_ake", ake)  # unregistered on purpose (module doc)
        self.name = name
        self.student_channels = student_channels
        self.lambda_ct = lambda_ct
        self.lambda_pos = lambda_pos
        a = ake.ake
        self.adaptor = Adaptor(student_channels, a.embed_dim, len(a.stride_list), adaptor_layers, adaptor_heads,
                               adaptor_points, adaptor_ffn_dim, adaptor_dropout)
        self.matcher = matcher if matcher is not None else HungarianMatcher(2.0, 5.0, 2.0)

    @property
    def ake(self) -> AKEPair:
        return self._frozen_ake.ake

    def _apply(self, fn, *args, **kwargs):
        # .to()/.float() reach registered modules only; the frozen AKEs must follow too.
        super()._apply(fn, *args, **kwargs)
        self._frozen_ake._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self._frozen_ake.train(False)
        return self

    @torch.no_grad()
    def teacher_knowledge(self, step: DistillStep) -> Dict[str, torch.Tensor]:
        """The teacher side of Eq. 7, batched ([B, ...] per :data:`KNOWLEDGE_KEYS`); samples B^.
        Computed once per step (kept in ``step.cache[name]``)."""
        if self.name in step.cache:
            return step.cache[self.name]
        ake = self.ake
        pyr = ake.teacher_pyramid(step.teacher)
        boxes, positive_pos, _ = ake.sample_boxes(step.targets)
        boxes = boxes.to(pyr.value.dtype)
        q_ct, ref_ct = ake.ct.generate(pyr)
        q_pos, _ = ake.pos.generate(pyr, boxes)
        z_ct = ake.ct.extract(q_ct, ref_ct, pyr)
        z_pos = ake.pos.extract(q_pos, boxes, pyr)
        logits, pred = ake.ct.predict(z_ct, ref_ct)
        positive_ct = matched_mask(self.matcher(logits, pred, step.targets), ake.num_queries, z_ct.device)
        know = dict(q_ct=q_ct, ref_ct=ref_ct, z_ct=z_ct, positive_ct=positive_ct,
                    q_pos=q_pos, boxes=boxes, z_pos=z_pos, positive_pos=positive_pos)
        step.cache[self.name] = know
        return know

    def export_knowledge(self, step: DistillStep) -> List[Dict[str, torch.Tensor]]:
        """Per image, the :data:`KNOWLEDGE_KEYS` tensors (module doc) of a teacher-only step."""
        know = self.teacher_knowledge(step)
        return [{k: v[b] for k, v in know.items()} for b in range(len(step.targets))]

    def _stored_knowledge(self, step: DistillStep, dtype, device) -> Dict[str, torch.Tensor]:
        if step.knowledge is None:
            raise ValueError("UniKD: the step has neither a teacher nor stored knowledge")
        try:
            per_image = [k[self.name] for k in step.knowledge]
        except KeyError as e:
            raise KeyError(f"UniKD: no stored knowledge under {self.name!r} (the method's name); keys: "
                           f"{sorted(step.knowledge[0])}") from e
        out = {}
        for key in KNOWLEDGE_KEYS:
            value = torch.stack([k[key] for k in per_image]).to(device)
            out[key] = value.bool() if key.startswith("positive") else value.to(dtype)
        return out

    def student_pyramid(self, view) -> Pyramid:
        """phi(F^S): the student's pyramid aligned to the teacher's strides, through the adaptor."""
        width = view.features[0].shape[1]
        if width != self.student_channels:
            raise ValueError(f"UniKD was built for {self.student_channels}-channel student features, the "
                             f"student ({type(view.model).__name__}) gives {width}: set student_channels={width}")
        strides = self.ake.stride_list
        plan = align_levels(strides, view.strides)
        feats = [resample(view.features[j], factor) for j, factor in plan]
        return self.adaptor(feats, strides, view.images.image_sizes)

    def forward(self, step: DistillStep) -> Dict[str, torch.Tensor]:
        pyr = self.student_pyramid(step.student)
        if step.teacher is None:
            know = self._stored_knowledge(step, pyr.value.dtype, pyr.value.device)
        else:
            know = self.teacher_knowledge(step)
        z_ct = self.ake.ct.extract(know["q_ct"].to(pyr.value.dtype), know["ref_ct"].to(pyr.value.dtype), pyr)
        z_pos = self.ake.pos.extract(know["q_pos"].to(pyr.value.dtype), know["boxes"].to(pyr.value.dtype), pyr)
        return {  # Eq. 7, each D by Eq. 8
            "loss_kd_unikd_ct": self.lambda_ct * decoupled_mse(z_ct, know["z_ct"], know["positive_ct"]),
            "loss_kd_unikd_pos": self.lambda_pos * decoupled_mse(z_pos, know["z_pos"], know["positive_pos"]),
        }
