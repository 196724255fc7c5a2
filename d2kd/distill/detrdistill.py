"""DETRDistill (Chang et al., ICCV 2023): three distillation losses for DETR -> DETR.

Each component is its own :class:`DistillLoss`, so a config combines them freely (and with
other methods) in the ``losses`` dict of :class:`~d2kd.meta_arch.DistillDETR`:

- :class:`HungarianLogitsDistill` ("LD", Sec. 4.1, Eq. 2-4): the teacher's predictions,
  split into positives and negatives by score, are each Hungarian-matched to the student's
  predictions of the same decoder stage; positives teach class and box, negatives box only.
- :class:`TargetAwareFeatureDistill` ("FD", Sec. 4.2, Eq. 5-8): the student's encoder output
  mimics the teacher's through an adapter, weighted by masks built from the teacher's queries
  and the quality of their predictions, at every teacher decoder stage.
- :class:`QueryPriorAssignmentDistill` ("AD", Sec. 4.3, Eq. 9): the teacher's queries are
  decoded by the student as an extra, isolated group, supervised with the ground truth under
  the teacher's own per-stage assignment.

FD and AD read the teacher's Hungarian matching to the ground truth at *every* decoder stage
(:func:`teacher_stage_matching`, one solver call per step, shared through ``step.cache``).

Paper defaults: lambda1 = 1 (LD), lambda2 = 20 (FD), lambda3 = 1 (AD), each the ``weight`` of
its class. Every returned value is already weighted; keys start with ``loss_kd_ld_``,
``loss_kd_fd`` and ``loss_kd_ad_``.

Where the paper leaves a choice open, the choice made here is written in the class docstring.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.utils import comm
from torch import nn

from d2kd.detr.queries import QueryGroup
from d2kd.layers import (
    box_cxcywh_to_xyxy,
    focal_class_cost,
    generalized_box_iou,
    pairwise_box_iou,
    pairwise_generalized_box_iou,
    sigmoid_focal_loss,
)
from d2kd.ops import batched_linear_sum_assignment

from .base import DistillLoss, DistillStep
from .levels import pair_levels, resize_like

LD_TERMS = ("pos_class", "pos_box", "neg_box")
CLASS_TARGETS = ("soft", "hard")
STAGE_MATCHING = "detrdistill.teacher_stage_matching"  # step.cache key (FD and AD share it)


# --------------------------------------------------------------------------- stage grouping
def stage_groups(num_teacher: int, num_student: int) -> List[List[int]]:
    """Which teacher decoder stages form the group of each student stage (Fig. 5, footnote 2).

    The teacher's ``num_teacher`` stages are cut into ``num_student`` contiguous groups, the
    larger groups first: student stage ``s`` (0-based) gets teacher stages
    ``ceil(s T / S) .. ceil((s + 1) T / S) - 1``. A group acts as one stage, so its *last*
    teacher stage supervises the student stage (:func:`supervising_stages`); the student's last
    stage is always supervised by the teacher's last. Examples (0-based):

    - 6 -> 3: ``[[0, 1], [2, 3], [4, 5]]`` (teacher stages 1, 3, 5 supervise);
    - 4 -> 3: ``[[0, 1], [2], [3]]``; 6 -> 6: one stage each.

    A student deeper than its teacher (``S > T``) gets the teacher stage its position maps to,
    each teacher stage shared by consecutive student stages (3 -> 6: ``[[0], [0], [1], [1], [2],
    [2]]``).
    """
    if num_teacher < 1 or num_student < 1:
        raise ValueError(f"decoder stage counts must be positive, got {num_teacher} and {num_student}")
    groups = []
    for s in range(num_student):
        start = -(-s * num_teacher // num_student)
        end = -(-(s + 1) * num_teacher // num_student)
        groups.append(list(range(start, end)) if end > start else [end - 1])
    return groups


def supervising_stages(num_teacher: int, num_student: int, progressive: bool = True) -> List[int]:
    """The teacher stage supervising each student stage: the last of its group (progressive,
    Eq. 4), or the teacher's last stage for every student stage (Tab. 7's "last-stage")."""
    if not progressive:
        return [num_teacher - 1] * num_student
    return [g[-1] for g in stage_groups(num_teacher, num_student)]


# --------------------------------------------------------------------------- helpers
def _graph_zero(*tensors: torch.Tensor) -> torch.Tensor:
    """A 0-d zero connected to the tensors' graphs (every parameter gets a gradient, as DDP wants)."""
    return sum(t.sum() * 0.0 for t in tensors)


def _first_true(mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Indices of the True entries of each row, first, in order.

    Args:
        mask: [R, M] bool.

    Returns:
        ``(order [R, Mmax], num [R])``: ``order[r, :num[r]]`` are row r's True columns
        ascending (the rest of the row is filler), Mmax = max(num).
    """
    num = mask.sum(1)
    width = int(num.max()) if mask.shape[0] else 0
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices[:, :width]
    return order, num


def _box_cost(pred: torch.Tensor, target: torch.Tensor, cost_bbox: float, cost_giou: float) -> torch.Tensor:
    """Box part of the matching cost: [R, N, 4] x [R, M, 4] cxcywh -> [R, N, M]."""
    cost = cost_bbox * torch.cdist(pred, target, p=1)
    return cost - cost_giou * pairwise_generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target))


def _box_losses(pred: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per pair L1 and 1 - GIoU of [Q, 4] cxcywh boxes -> ([Q], [Q])."""
    l1 = (pred - target).abs().sum(-1)
    giou = 1 - generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target))
    return l1, giou


def binary_kl(logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Element-wise ``KL(Bernoulli(p) || Bernoulli(sigmoid(x)))`` = BCE(x, p) - H(p), not reduced.

    The gradient is the soft-target BCE's (``sigmoid(x) - p``); the value is 0 where the student
    reproduces the teacher's probability. logits, probs: [...] -> [...].
    """
    entropy = -(torch.special.xlogy(probs, probs) + torch.special.xlogy(1 - probs, 1 - probs))
    return F.binary_cross_entropy_with_logits(logits, probs, reduction="none") - entropy


def soft_class_cost(logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Matching cost of the soft class term: ``sum_k binary_kl(x_nk, p_mk)`` for every pair.

    logits: [R, N, K] (student), probs: [R, M, K] (teacher) -> [R, N, M]; one matmul
    (``BCE(x, p) = softplus(x) - p x``).
    """
    neg_entropy = (torch.special.xlogy(probs, probs) + torch.special.xlogy(1 - probs, 1 - probs)).sum(-1)
    return F.softplus(logits).sum(-1)[..., None] - logits @ probs.transpose(1, 2) + neg_entropy[:, None, :]


def pair_normalizer(stage: torch.Tensor, num_stages: int, device) -> torch.Tensor:
    """[P] pairs per stage in the batch, averaged across processes (DETR's ``num_boxes``), >= 1.

    stage: [Q] the stage of each pair (both LD sets together).
    """
    count = torch.bincount(stage, minlength=num_stages).to(device=device, dtype=torch.float32)
    if comm.get_world_size() > 1:
        torch.distributed.all_reduce(count)
        count = count / comm.get_world_size()
    return count.clamp(min=1.0)


@torch.no_grad()
def teacher_stage_matching(step: DistillStep) -> List[List[Tuple[torch.Tensor, torch.Tensor]]]:
    """The DETR teacher's Hungarian matching to the ground truth at every decoder stage.

    One batched solver call with the teacher's own matcher over its [D_T, B, M] predictions,
    computed once per step and kept in ``step.cache[STAGE_MATCHING]`` (FD and AD both read it).

    Returns:
        D_T lists of B ``(query_idx, gt_idx)`` pairs; the last equals ``record.matching``.
    """
    if STAGE_MATCHING not in step.cache:
        out = step.teacher.record.outputs
        matcher = step.teacher.model.criterion.matcher
        step.cache[STAGE_MATCHING] = matcher.match_stack(out.logits.float(), out.boxes.float(), step.targets)
    return step.cache[STAGE_MATCHING]


# --------------------------------------------------------------------------- LD
class HungarianLogitsDistill(DistillLoss):
    """Hungarian-matching logits distillation with negative location distillation (Sec. 4.1).

    For each student decoder stage s and its supervising teacher stage t(s)
    (:func:`supervising_stages`):

    1. split the teacher's predictions at stage t(s) into positives (best class probability
       ``> score_threshold``) and negatives (the rest);
    2. Eq. 2: Hungarian-match the positives, as pseudo ground truth, to the student's stage-s
       predictions; each matched pair gets a class term and the L1 / GIoU box terms towards its
       teacher prediction. Eq. 2 sums ``L_match`` over the matched pairs (its "i = 1..N" runs
       over the student's predictions, of which only the matched ones have a partner);
    3. Eq. 3: Hungarian-match the negatives to the student's predictions with the *box part*
       of the cost, and apply box losses only (footnote 1: a teacher negative need not be
       background, so there is no class term);
    4. Eq. 4: sum over stages.

    All (stage, image) problems of a set are solved in one batched assignment call, so a step
    makes two calls (positives, then negatives), whatever the depth and batch.

    Choices where the paper is open:

    - threshold: 0.3 on the sigmoid score, which on a trained focal-loss DETR keeps about one
      prediction per object (the paper reports ~7 positives per COCO image);
    - class term (``class_target``): ``"soft"`` (default, the authors' released code): the
      student's sigmoid probabilities towards the teacher's probabilities of *every* class,
      as a per-class binary KL divergence (the released code's soft-target BCE minus the
      teacher's entropy: the same gradient, and 0 when the student reproduces the teacher),
      summed over classes; matched with the same divergence as class cost (weighted by the
      matcher's ``cost_class``). The "dark knowledge" is in the non-maximal probabilities,
      which a hard target throws away. ``"hard"``: the student criterion's sigmoid focal loss
      towards the one-hot teacher argmax, matched with the focal class cost (the teacher
      prediction treated exactly as a ground-truth object);
    - loss weights: the student criterion's ``weight_dict`` (class / L1 / GIoU) unless
      ``class_weight`` is given, so that Eq. 2 and 3 are the student's own ``L_match``;
      ``weight`` (lambda1) multiplies everything;
    - normalisation: every term of a stage is divided by that stage's *total* number of matched
      pairs (positives and negatives together) in the batch, averaged across processes like
      DETR's ``num_boxes`` (the released code's one normaliser per stage); stages are summed;
    - negatives are matched to the student predictions that no teacher positive took
      (``exclude_positive_matches``), so no student prediction is pulled towards two teacher
      boxes; with ``False`` every student prediction may take a negative, as a literal reading
      of Eq. 3. Teacher queries > student queries (900 vs 300) just leaves teacher negatives
      unmatched.

    Args:
        weight: lambda1.
        score_threshold: teacher positives have a best class probability above this.
        terms: which of ``"pos_class"``, ``"pos_box"``, ``"neg_box"`` to apply (Tab. 6).
        progressive: stage-wise supervision (Eq. 4); False: the teacher's last stage supervises
            every student stage (Tab. 7's "last-stage distillation").
        exclude_positive_matches: see above.
        class_target: ``"soft"`` or ``"hard"`` (see above).
        class_weight: weight of the class term; None: the student criterion's ``loss_class``.

    Returns (forward): ``loss_kd_ld_pos_class``, ``loss_kd_ld_pos_bbox``, ``loss_kd_ld_pos_giou``,
    ``loss_kd_ld_neg_bbox``, ``loss_kd_ld_neg_giou`` (those of the enabled terms).
    """

    teacher_families = ("detr",)
    student_families = ("detr",)

    def __init__(
        self,
        *,
        weight: float = 1.0,
        score_threshold: float = 0.3,
        terms: Sequence[str] = LD_TERMS,
        progressive: bool = True,
        exclude_positive_matches: bool = True,
        class_target: str = "soft",
        class_weight: Optional[float] = None,
    ):
        super().__init__()
        unknown = set(terms) - set(LD_TERMS)
        if unknown or not terms:
            raise ValueError(f"LD terms must be a non-empty subset of {LD_TERMS}, got {list(terms)}")
        if class_target not in CLASS_TARGETS:
            raise ValueError(f"LD class_target must be one of {CLASS_TARGETS}, got {class_target!r}")
        self.weight = weight
        self.score_threshold = score_threshold
        self.terms = tuple(terms)
        self.progressive = progressive
        self.exclude_positive_matches = exclude_positive_matches
        self.class_target = class_target
        self.class_weight = class_weight

    def stage_pairs(self, num_teacher: int, num_student: int) -> List[int]:
        """The supervising teacher stage of each student stage."""
        return supervising_stages(num_teacher, num_student, self.progressive)

    def forward(self, step: DistillStep) -> Dict[str, torch.Tensor]:
        t_out, s_out = step.teacher.record.outputs, step.student.record.outputs
        criterion = step.student.model.criterion
        t_stages = self.stage_pairs(t_out.logits.shape[0], s_out.logits.shape[0])
        return self.compute(
            t_out.logits[t_stages].detach(), t_out.boxes[t_stages].detach(), s_out.logits, s_out.boxes, criterion
        )

    def compute(self, t_logits, t_boxes, s_logits, s_boxes, criterion) -> Dict[str, torch.Tensor]:
        """The loss for already paired stages.

        Args:
            t_logits: [P, B, M, K] and t_boxes: [P, B, M, 4]: the supervising teacher stage of
                each of the P student stages.
            s_logits: [P, B, N, K] and s_boxes: [P, B, N, 4]: the student's stages.
            criterion: the student's :class:`~d2kd.detr.criterion.SetCriterion` (matching costs,
                focal parameters, loss weights).
        """
        P, B, N, K = s_logits.shape
        M = t_logits.shape[2]
        R = P * B
        t_logits, t_boxes = t_logits.reshape(R, M, K).float(), t_boxes.reshape(R, M, 4).to(s_boxes.dtype)
        s_logits_f, s_boxes_f = s_logits.reshape(R, N, K), s_boxes.reshape(R, N, 4)
        matcher, w = criterion.matcher, dict(criterion.weight_dict)
        if self.class_weight is not None:
            w["loss_class"] = self.class_weight
        t_probs = t_logits.sigmoid()
        positive = t_probs.amax(-1) > self.score_threshold  # [R, M]
        use_pos = any(t in self.terms for t in ("pos_class", "pos_box"))
        use_neg = "neg_box" in self.terms
        no_pairs = _no_pairs(s_logits.device)
        pos = self._match_positives(t_probs, t_boxes, s_logits_f, s_boxes_f, positive, matcher) \
            if use_pos or (self.exclude_positive_matches and use_neg) else no_pairs
        neg = no_pairs
        if use_neg:
            taken = None
            if self.exclude_positive_matches:
                taken = torch.zeros(R, N, dtype=torch.bool, device=s_logits.device)
                taken[pos[0], pos[1]] = True
            neg = self._match_negatives(t_boxes, s_boxes_f, ~positive, taken, matcher)

        # Eq. 4 with one normaliser per stage: the stage's pairs of the enabled sets (see doc)
        counted = [p[0] for p, used in ((pos, use_pos), (neg, use_neg)) if used]
        norm = pair_normalizer(torch.div(torch.cat(counted), B, rounding_mode="floor"), P, s_logits.device)
        zero = _graph_zero(s_logits, s_boxes)
        losses = {}

        def total(values, r):  # sum over pairs of value / (pairs of its stage)
            return (values / norm[torch.div(r, B, rounding_mode="floor")].to(values.dtype)).sum() + zero

        if use_pos:  # Eq. 2: class and box terms on the matched positives
            r, i, t = pos
            if "pos_class" in self.terms:
                if self.class_target == "soft":
                    cls = binary_kl(s_logits_f[r, i].float(), t_probs[r, t]).sum(-1)
                else:
                    onehot = torch.zeros_like(s_logits_f[r, i])
                    onehot[torch.arange(len(r), device=onehot.device), t_probs[r, t].argmax(-1)] = 1.0
                    cls = sigmoid_focal_loss(s_logits_f[r, i], onehot, criterion.focal_alpha,
                                             criterion.focal_gamma).sum(-1)
                losses["loss_kd_ld_pos_class"] = w["loss_class"] * total(cls, r)
            if "pos_box" in self.terms:
                l1, giou = _box_losses(s_boxes_f[r, i], t_boxes[r, t])
                losses["loss_kd_ld_pos_bbox"] = w["loss_bbox"] * total(l1, r)
                losses["loss_kd_ld_pos_giou"] = w["loss_giou"] * total(giou, r)
        if use_neg:  # Eq. 3: box terms only on the matched negatives
            r, i, t = neg
            l1, giou = _box_losses(s_boxes_f[r, i], t_boxes[r, t])
            losses["loss_kd_ld_neg_bbox"] = w["loss_bbox"] * total(l1, r)
            losses["loss_kd_ld_neg_giou"] = w["loss_giou"] * total(giou, r)
        return {k: self.weight * v for k, v in losses.items()}

    @torch.no_grad()
    def _match_positives(self, t_probs, t_boxes, s_logits, s_boxes, positive, matcher):
        """Eq. 2's assignment: -> (problem r, student query i, teacher query t), each [Q]."""
        order, num = _first_true(positive)  # [R, Mp]
        if order.shape[1] == 0:
            return _no_pairs(s_logits.device)
        probs = t_probs.gather(1, order[..., None].expand(-1, -1, t_probs.shape[-1]))
        boxes = t_boxes.gather(1, order[..., None].expand(-1, -1, 4))
        if self.class_target == "soft":
            cost = matcher.cost_class * soft_class_cost(s_logits.float(), probs)
        else:
            cost = matcher.cost_class * focal_class_cost(s_logits.float(), probs.argmax(-1), matcher.alpha,
                                                         matcher.gamma)
        cost = cost + _box_cost(s_boxes.float(), boxes.float(), matcher.cost_bbox, matcher.cost_giou)
        return _pairs(batched_linear_sum_assignment(cost, num), order)

    @torch.no_grad()
    def _match_negatives(self, t_boxes, s_boxes, negative, taken, matcher):
        """Eq. 3's assignment (box cost only); student rows in ``taken`` [R, N] take no negative."""
        order, num = _first_true(negative)
        if order.shape[1] == 0:
            return _no_pairs(s_boxes.device)
        boxes = t_boxes.gather(1, order[..., None].expand(-1, -1, 4))
        cost = _box_cost(s_boxes.float(), boxes.float(), matcher.cost_bbox, matcher.cost_giou)
        if taken is not None and taken.any():
            # A row of one constant above every real cost never displaces a free row and never
            # changes the free rows' optimum; any column it still gets is dropped below.
            cost = cost.masked_fill(taken[..., None], float(cost.max()) + 1.0)
        r, i, t = _pairs(batched_linear_sum_assignment(cost, num), order)
        if taken is not None:
            keep = ~taken[r, i]
            r, i, t = r[keep], i[keep], t[keep]
        return r, i, t


def _pairs(assignment: torch.Tensor, order: torch.Tensor):
    """[R, N] assignment to columns of ``order`` [R, Mx] -> (r, student i, teacher query t)."""
    r, i = (assignment >= 0).nonzero(as_tuple=True)
    return r, i, order[r, assignment[r, i]]


def _no_pairs(device):
    empty = torch.zeros(0, dtype=torch.long, device=device)
    return empty, empty, empty


# --------------------------------------------------------------------------- FD
def quality_scores(logits: torch.Tensor, boxes: torch.Tensor, matching, targets, gamma: float = 0.5) -> torch.Tensor:
    """Eq. 7: ``q_i = c_i^gamma * IoU(b_i^GT, b_i^pred)^(1 - gamma)`` for every teacher query.

    Args:
        logits: [B, M, K] and boxes: [B, M, 4] (cxcywh): the teacher's predictions at one stage.
        matching: B pairs ``(query_idx, gt_idx)``: the teacher's bipartite match to the ground
            truth at that stage.
        targets: B dicts with ``labels`` [G_b] and ``boxes`` [G_b, 4].
        gamma: the balance of class score and IoU (paper: 0.5).

    Returns:
        [B, M]: ``c_i`` is the sigmoid probability of the matched object's class and the IoU is
        the plain IoU with the matched box; queries matched to no object have q = 0.
    """
    q = logits.new_zeros(logits.shape[:2])
    for b, (qi, gi) in enumerate(matching):
        if len(qi) == 0:
            continue
        qi, gi = qi.to(logits.device), gi.to(logits.device)
        labels = targets[b]["labels"][gi]
        score = logits[b, qi, labels].sigmoid()
        pred = box_cxcywh_to_xyxy(boxes[b, qi])
        gt = box_cxcywh_to_xyxy(targets[b]["boxes"][gi].to(boxes.dtype))
        iou = pairwise_box_iou(pred[:, None], gt[:, None])[0][:, 0, 0]
        q[b, qi] = score.pow(gamma) * iou.clamp(min=0).pow(1 - gamma)
    return q


def query_masks(features: torch.Tensor, queries: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 6's per-query masks ``psi_i = F^T . Q_i^T`` on one feature level, normalised.

    Eq. 6's raw dot product is ill-scaled: unbounded, of either sign (a negative response would
    still count, squared, in Eq. 8), and on LayerNorm'd features any temperature makes it
    either flat or one cell wide. The authors' released code takes the cosine similarity of the
    L2-normalised feature and query, clamps it at 0 and divides by its peak; so does this:
    ``psi_i(x) = max(0, cos(F^T(x), Q_i)) / max_x' max(0, cos(F^T(x'), Q_i))``, in [0, 1], 1 at
    the query's strongest cell, 0 on padding (and everywhere for a query similar to no cell).

    Args:
        features: [B, d, H, W] teacher features.
        queries: [B, G, d] teacher query embeddings.
        valid: [B, H, W] bool, False on padding.

    Returns:
        [B, G, H, W].
    """
    cos = torch.einsum("bchw,bgc->bghw", F.normalize(features, dim=1), F.normalize(queries, dim=-1))
    cos = cos.clamp(min=0) * valid[:, None]
    peak = cos.flatten(2).amax(-1)[..., None, None]
    return cos / peak.clamp(min=torch.finfo(cos.dtype).tiny)


class TargetAwareFeatureDistill(DistillLoss):
    """Target-aware feature distillation (Sec. 4.2, Eq. 5-8) on the encoder output.

    Per teacher decoder stage k, paired feature level (teacher and student levels of equal
    stride, ``levels.py``) and image, with F^T the teacher's encoder output (footnote 2: the
    encoder output keeps the input resolutions), phi a learnable 1x1 conv (C_S -> C_T) per
    level, and D = F^T - phi(F^S):

        L_k = sum_i q_i^k / (Z^k d H W) * || psi_i^k (.) D ||^2                     (Eq. 8)

    where d = C_T, H W the image's valid cells at that level (padding is excluded everywhere),
    q_i^k the quality score of teacher query i at stage k (Eq. 7, :func:`quality_scores`, from
    that stage's predictions and bipartite match) and psi_i^k its mask (Eq. 6,
    :func:`query_masks`) from that stage's decoder embedding. The result is averaged over
    images, levels and teacher stages and multiplied by ``weight`` (lambda2 = 20).

    Choices where the paper is open:

    - Q^T: the teacher's decoder output embeddings of its detection queries at each stage (the
      embeddings that produced the predictions q_i scores), every stage distilled with its own
      queries, scores and match, as the authors' released code does;
    - psi: see :func:`query_masks` (the released code's clamped, peak-normalised cosine);
    - normaliser Z: the paper's 1/M would make the term vanish (about 7 of M = 300..900 queries
      have q > 0 on COCO); Z = sum_i q_i instead, so the quality scores act as weights of a mean
      over the matched queries. With psi peaking at 1, each stage-level term is then a masked
      per-element MSE as in the released code, which sums that MSE over 6 stages and 4 levels
      without a weight (a factor 24 on the mean): lambda2 = 20 on the mean over stages and
      levels gives a term of the released code's magnitude (calibration, ``weight``);
    - q and psi are constants (teacher-side, no gradient); an image whose teacher matches no
      object (no ground truth) contributes 0.

    Args:
        student_channels: C_S. teacher_channels: C_T.
        num_levels: number of paired levels (one adapter each).
        weight: lambda2.
        gamma: of Eq. 7.
    """

    teacher_families = ("detr",)
    student_families = ("detr",)

    def __init__(self, *, student_channels: int, teacher_channels: int, num_levels: int, weight: float = 20.0,
                 gamma: float = 0.5):
        super().__init__()
        self.adapters = nn.ModuleList(nn.Conv2d(student_channels, teacher_channels, 1) for _ in range(num_levels))
        self.weight = weight
        self.gamma = gamma

    def forward(self, step: DistillStep) -> Dict[str, torch.Tensor]:
        record = step.teacher.record
        pairs = pair_levels(step.teacher.strides, step.student.strides)
        if len(pairs) != len(self.adapters):
            raise ValueError(
                f"TargetAwareFeatureDistill has {len(self.adapters)} adapters but the teacher strides "
                f"{step.teacher.strides} and student strides {step.student.strides} pair {len(pairs)} levels; "
                f"set num_levels={len(pairs)}"
            )
        matching = teacher_stage_matching(step)
        out = record.outputs
        stages = []
        for k in range(out.logits.shape[0]):
            q = quality_scores(out.logits[k].float(), out.boxes[k].float(), matching[k], step.targets, self.gamma)
            # only matched queries have q > 0: gather them (padded with q = 0) instead of all M
            index, num = _first_true(q > 0)
            q_sel = q.gather(1, index) * (torch.arange(index.shape[1], device=q.device) < num[:, None])
            hidden = out.hidden[k]
            stages.append((q_sel, hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1])).float()))
        pads = record.enc.level_padding_masks()
        total = 0.0
        for adapter, (ti, si) in zip(self.adapters, pairs):
            target = step.teacher.features[ti].detach().float()
            pred = resize_like(adapter(step.student.features[si]), target).float()
            valid = ~pads[ti]
            for q_sel, queries in stages:
                total = total + self.level_loss(target, pred, queries, q_sel, valid).mean()
        return {"loss_kd_fd": self.weight * total / (len(pairs) * len(stages))}  # Eq. 8, mean over stages

    @staticmethod
    def level_loss(target, pred, queries, q, valid) -> torch.Tensor:
        """Eq. 8 on one level and stage, per image (normaliser: see the class doc).

        Args:
            target: [B, d, H, W] F^T; pred: [B, d, H, W] phi(F^S).
            queries: [B, G, d] the query embeddings with q > 0 (padded); q: [B, G].
            valid: [B, H, W] bool.

        Returns:
            [B].
        """
        psi = query_masks(target, queries, valid)  # [B, G, H, W]
        # ||psi_i (.) D||^2 = sum_cells psi_i^2 |D|^2: weight every cell once by sum_i q_i psi_i^2
        cell_weight = torch.einsum("bg,bghw->bhw", q, psi.pow(2))
        err = (pred - target).pow(2).sum(1) * valid
        cells = valid.flatten(1).sum(1).clamp(min=1)
        z = q.sum(1).clamp(min=torch.finfo(q.dtype).tiny)
        return (cell_weight * err).flatten(1).sum(1) / (z * target.shape[1] * cells)


# --------------------------------------------------------------------------- AD
class QueryPriorAssignmentDistill(DistillLoss):
    """Query-prior assignment distillation (Sec. 4.3, Eq. 9).

    The teacher's detection queries -- content and anchors as its decoder received them
    (``record.queries``) -- are decoded by the student as an extra group (``student_groups``),
    isolated from the student's own queries (no ``sees``; the decoder's group mask). Query i of
    the group *is* the teacher's query i, so the teacher's bipartite matches to the ground truth
    index the group directly. Student stage s is supervised under the teacher's match at stage
    t(s), the teacher stage that supervises it in LD (:func:`supervising_stages`: the last of
    its group; the teacher's assignment is stable across stages, which is what AD relies on,
    but not identical): the student criterion's detection losses under that assignment
    (``SetCriterion.stack_losses``: focal class loss on all group queries, unassigned ones
    towards "no object", L1/GIoU on the assigned ones, divided by the number of objects),
    summed over stages and multiplied by ``weight`` (lambda3).

    Training only: the group exists in the student's training pass; evaluation uses the student
    alone. When the widths differ, a learnable linear adapter maps the teacher's content
    (C_T -> C_S); anchors are boxes and need none. Teacher inputs are constants (no gradient).

    Args:
        student_channels: C_S. teacher_channels: C_T.
        weight: lambda3.
        progressive: as LD's; False: the teacher's last-stage match for every student stage.

    Returns (forward): ``loss_kd_ad_class``, ``loss_kd_ad_bbox``, ``loss_kd_ad_giou``.
    """

    teacher_families = ("detr",)
    student_families = ("detr",)
    group_name = "detrdistill_teacher_queries"

    def __init__(self, *, student_channels: int, teacher_channels: int, weight: float = 1.0,
                 progressive: bool = True):
        super().__init__()
        self.adapter = (nn.Linear(teacher_channels, student_channels) if teacher_channels != student_channels
                        else nn.Identity())
        self.weight = weight
        self.progressive = progressive

    def student_groups(self, step: DistillStep, enc, det: QueryGroup) -> List[QueryGroup]:
        teacher_queries = step.teacher.record.queries
        content = self.adapter(teacher_queries.content.detach().to(det.content.dtype))
        anchors = teacher_queries.anchor_logits.detach().to(det.anchor_logits.dtype)
        return [QueryGroup(self.group_name, content, anchors)]

    def forward(self, step: DistillStep) -> Dict[str, torch.Tensor]:
        matching = teacher_stage_matching(step)
        out = step.student.record.groups[self.group_name]
        stages = supervising_stages(len(matching), out.logits.shape[0], self.progressive)
        criterion = step.student.model.criterion
        num_boxes = criterion.num_boxes(step.targets, out.logits.device)
        losses = criterion.stack_losses(out.logits, out.boxes, step.targets, [matching[t] for t in stages],
                                        num_boxes)
        return {f"loss_kd_ad_{k[len('loss_'):]}": self.weight * v.sum() for k, v in losses.items()}
