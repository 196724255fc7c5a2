"""DETRDistill (Chang et al., ICCV 2023): three distillation losses for DETR -> DETR.

Each component is its own :class:`DistillLoss`, so a config combines them freely (and with
other methods) in the ``losses`` dict of :class:`~d2kd.meta_arch.DistillDETR`:

- :class:`HungarianLogitsDistill` ("LD", Sec. 4.1, Eq. 2-4): the teacher's predictions,
  split into positives and negatives by score, are each Hungarian-matched to the student's
  predictions of the same decoder stage; positives teach class and box, negatives box only.
- :class:`TargetAwareFeatureDistill` ("FD", Sec. 4.2, Eq. 5-8): the student's encoder output
  mimics the teacher's through an adapter, weighted by masks built from the teacher's queries
  and the quality of their predictions.
- :class:`QueryPriorAssignmentDistill` ("AD", Sec. 4.3, Eq. 9): the teacher's queries are
  decoded by the student as an extra, isolated group, supervised with the ground truth under
  the teacher's own assignment.

Paper defaults: lambda1 = 1 (LD), lambda2 = 20 (FD), lambda3 = 1 (AD), each the ``weight`` of
its class. Every returned value is already weighted; keys start with ``loss_kd_ld_``,
``loss_kd_fd`` and ``loss_kd_ad_``.

Where the paper leaves a choice open, the choice made here is written in the class docstring.
"""
import math
from typing import Dict, List, Sequence, Tuple

import torch
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


def _per_stage_mean(values: torch.Tensor, stage: torch.Tensor, num_stages: int) -> torch.Tensor:
    """sum over stages of the mean of ``values`` [Q] within each stage (``stage`` [Q])."""
    count = torch.bincount(stage, minlength=num_stages).clamp(min=1).to(values.dtype)
    return (values / count[stage]).sum()


# --------------------------------------------------------------------------- LD
class HungarianLogitsDistill(DistillLoss):
    """Hungarian-matching logits distillation with negative location distillation (Sec. 4.1).

    For each student decoder stage s and its supervising teacher stage t(s)
    (:func:`supervising_stages`):

    1. split the teacher's predictions at stage t(s) into positives (best class probability
       ``> score_threshold``) and negatives (the rest);
    2. Eq. 2: Hungarian-match the positives, as pseudo ground truth with the teacher's best class
       as label, to the student's stage-s predictions with the student's detection matching
       cost (its matcher's focal class, L1 and GIoU costs); each matched student prediction gets
       the detection losses towards its teacher prediction;
    3. Eq. 3: Hungarian-match the negatives to the student's predictions with the *box part*
       of that cost, and apply box losses only (footnote 1: a teacher negative need not be
       background, so there is no class term);
    4. Eq. 4: sum over stages.

    All (stage, image) problems of a set are solved in one batched assignment call, so a step
    makes two calls (positives, then negatives), whatever the depth and batch.

    Choices where the paper is open:

    - threshold: 0.3 on the sigmoid score, which on a trained focal-loss DETR keeps about one
      prediction per object (the paper reports ~7 positives per COCO image);
    - class loss on matched positives: the student criterion's sigmoid focal loss towards the
      one-hot *hard* teacher class (the teacher prediction is treated exactly as a ground-truth
      object would be), on the matched student predictions only (unmatched student
      predictions get no class term here: Eq. 2 sums over matched pairs);
    - loss weights: the student criterion's ``weight_dict`` (class / L1 / GIoU), so that Eq. 2
      and 3 are the student's own ``L_match``; ``weight`` (lambda1) multiplies everything;
    - normalisation: within each stage, a set's terms are averaged over its matched pairs
      (the number of teacher positives, resp. matched negatives, in the batch; at least 1),
      the analogue of DETR's division by the number of objects; the stages are then summed;
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
    ):
        super().__init__()
        unknown = set(terms) - set(LD_TERMS)
        if unknown or not terms:
            raise ValueError(f"LD terms must be a non-empty subset of {LD_TERMS}, got {list(terms)}")
        self.weight = weight
        self.score_threshold = score_threshold
        self.terms = tuple(terms)
        self.progressive = progressive
        self.exclude_positive_matches = exclude_positive_matches

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
        t_logits, t_boxes = t_logits.reshape(R, M, K), t_boxes.reshape(R, M, 4).to(s_boxes.dtype)
        s_logits_f, s_boxes_f = s_logits.reshape(R, N, K), s_boxes.reshape(R, N, 4)
        matcher, w = criterion.matcher, criterion.weight_dict
        positive = t_logits.sigmoid().amax(-1) > self.score_threshold  # [R, M]
        zero = _graph_zero(s_logits, s_boxes)
        losses = {}
        use_pos = any(t in self.terms for t in ("pos_class", "pos_box"))
        pos_pairs = self._match_positives(t_logits, t_boxes, s_logits_f, s_boxes_f, positive, matcher) \
            if use_pos or (self.exclude_positive_matches and "neg_box" in self.terms) else None

        if use_pos:
            r, i, t = pos_pairs
            stage = torch.div(r, B, rounding_mode="floor")
            if "pos_class" in self.terms:
                onehot = torch.zeros_like(s_logits_f[r, i])
                onehot[torch.arange(len(r), device=onehot.device), t_logits[r, t].argmax(-1)] = 1.0
                focal = sigmoid_focal_loss(s_logits_f[r, i], onehot, criterion.focal_alpha,
                                           criterion.focal_gamma).sum(-1)
                losses["loss_kd_ld_pos_class"] = w["loss_class"] * _per_stage_mean(focal, stage, P) + zero
            if "pos_box" in self.terms:
                l1, giou = _box_losses(s_boxes_f[r, i], t_boxes[r, t])
                losses["loss_kd_ld_pos_bbox"] = w["loss_bbox"] * _per_stage_mean(l1, stage, P) + zero
                losses["loss_kd_ld_pos_giou"] = w["loss_giou"] * _per_stage_mean(giou, stage, P) + zero

        if "neg_box" in self.terms:
            taken = None
            if self.exclude_positive_matches:
                taken = torch.zeros(R, N, dtype=torch.bool, device=s_logits.device)
                taken[pos_pairs[0], pos_pairs[1]] = True
            r, i, t = self._match_negatives(t_boxes, s_boxes_f, ~positive, taken, matcher)
            stage = torch.div(r, B, rounding_mode="floor")
            l1, giou = _box_losses(s_boxes_f[r, i], t_boxes[r, t])
            losses["loss_kd_ld_neg_bbox"] = w["loss_bbox"] * _per_stage_mean(l1, stage, P) + zero
            losses["loss_kd_ld_neg_giou"] = w["loss_giou"] * _per_stage_mean(giou, stage, P) + zero
        return {k: self.weight * v for k, v in losses.items()}

    @torch.no_grad()
    def _match_positives(self, t_logits, t_boxes, s_logits, s_boxes, positive, matcher):
        """Eq. 2's assignment: -> (problem r, student query i, teacher query t), each [Q]."""
        order, num = _first_true(positive)  # [R, Mp]
        if order.shape[1] == 0:
            return _no_pairs(s_logits.device)
        labels = t_logits.gather(1, order[..., None].expand(-1, -1, t_logits.shape[-1])).argmax(-1)
        boxes = t_boxes.gather(1, order[..., None].expand(-1, -1, 4))
        cost = matcher.cost_class * focal_class_cost(s_logits.float(), labels, matcher.alpha, matcher.gamma)
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
        logits: [B, M, K] and boxes: [B, M, 4] (cxcywh): the teacher's last-stage predictions.
        matching: B pairs ``(query_idx, gt_idx)``: the teacher's bipartite match to the ground
            truth (``record.matching``).
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

    The paper leaves the scale of the dot products open; here each mask is the spatial softmax
    of ``F . Q_i / sqrt(d)`` over the image's valid cells divided by its maximum, i.e.
    ``psi_i = exp((s_i - max s_i) / sqrt(d))``: in (0, 1], 1 at the query's strongest cell,
    0 on padding. (A query that responds uniformly gives psi = 1, FitNet's mask.)

    Args:
        features: [B, d, H, W] teacher features.
        queries: [B, G, d] teacher query embeddings.
        valid: [B, H, W] bool, False on padding.

    Returns:
        [B, G, H, W].
    """
    scores = torch.einsum("bchw,bgc->bghw", features, queries) / math.sqrt(features.shape[1])
    scores = scores.masked_fill(~valid[:, None], float("-inf"))
    peak = scores.flatten(2).amax(-1).clamp(min=torch.finfo(scores.dtype).min)[..., None, None]
    return (scores - peak).exp() * valid[:, None]


class TargetAwareFeatureDistill(DistillLoss):
    """Target-aware feature distillation (Sec. 4.2, Eq. 5-8) on the encoder output.

    Per paired feature level (teacher and student levels of equal stride, ``levels.py``) and
    image, with F^T the teacher's encoder output (footnote 2: the encoder output keeps the
    input resolutions), phi a learnable 1x1 conv (C_S -> C_T) per level, and D = F^T - phi(F^S):

        L = sum_i q_i / (M d H W) * || psi_i (.) D ||^2                              (Eq. 8)

    where M is the teacher's number of queries, d = C_T, H W the image's valid cells at that
    level (padding is excluded everywhere), q_i the quality score (Eq. 7,
    :func:`quality_scores`) and psi_i the query's mask (Eq. 6, :func:`query_masks`). The result
    is averaged over images and levels and multiplied by ``weight`` (lambda2 = 20).

    Choices where the paper is open:

    - Q^T: the teacher's last-stage decoder output embeddings of its detection queries (the
      embeddings that produced the predictions q_i scores; learned input queries are the same
      for every image and say nothing about the image);
    - psi normalisation: see :func:`query_masks` (peak 1, temperature sqrt(d));
    - q_i uses the teacher's last-stage bipartite match to the ground truth
      (``needs_teacher_matching``); unmatched teacher queries have q = 0, so only the matched
      ones need a mask;
    - q and psi are constants (teacher-side, no gradient); the normaliser keeps the paper's M.

    Args:
        student_channels: C_S. teacher_channels: C_T.
        num_levels: number of paired levels (one adapter each).
        weight: lambda2.
        gamma: of Eq. 7.
    """

    needs_teacher_matching = True
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
        if record.matching is None:
            raise RuntimeError("TargetAwareFeatureDistill needs the teacher's matching (needs_teacher_matching)")
        logits, boxes, hidden = record.outputs.logits[-1], record.outputs.boxes[-1], record.outputs.hidden[-1]
        q = quality_scores(logits.float(), boxes.float(), record.matching, step.targets, self.gamma)
        # only matched queries have q > 0: gather them (padded with q = 0) instead of all M
        index, num = _first_true(q > 0)
        q_sel = q.gather(1, index)
        q_sel = q_sel * (torch.arange(index.shape[1], device=q.device) < num[:, None])
        queries = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1])).float()
        pads = record.enc.level_padding_masks()
        total = 0.0
        for adapter, (ti, si) in zip(self.adapters, pairs):
            target = step.teacher.features[ti].detach().float()
            pred = resize_like(adapter(step.student.features[si]), target).float()
            valid = ~pads[ti]
            total = total + self.level_loss(target, pred, queries, q_sel, valid, logits.shape[1]).mean()
        return {"loss_kd_fd": self.weight * total / len(pairs)}

    @staticmethod
    def level_loss(target, pred, queries, q, valid, num_queries: int) -> torch.Tensor:
        """Eq. 8 on one level, per image.

        Args:
            target: [B, d, H, W] F^T; pred: [B, d, H, W] phi(F^S).
            queries: [B, G, d] the query embeddings with q > 0 (padded); q: [B, G].
            valid: [B, H, W] bool. num_queries: M.

        Returns:
            [B].
        """
        psi = query_masks(target, queries, valid)  # [B, G, H, W]
        # ||psi_i (.) D||^2 = sum_cells psi_i^2 |D|^2: weight every cell once by sum_i q_i psi_i^2
        cell_weight = torch.einsum("bg,bghw->bhw", q, psi.pow(2))
        err = (pred - target).pow(2).sum(1) * valid
        cells = valid.flatten(1).sum(1).clamp(min=1)
        return (cell_weight * err).flatten(1).sum(1) / (num_queries * target.shape[1] * cells)


# --------------------------------------------------------------------------- AD
class QueryPriorAssignmentDistill(DistillLoss):
    """Query-prior assignment distillation (Sec. 4.3, Eq. 9).

    The teacher's detection queries -- content and anchors as its decoder received them
    (``record.queries``) -- are decoded by the student as an extra group (``student_groups``),
    isolated from the student's own queries (no ``sees``; the decoder's group mask). Query i of
    the group *is* the teacher's query i, so the teacher's last-stage bipartite match to the
    ground truth (``needs_teacher_matching``) indexes the group directly; every student decoder
    stage of the group gets the student criterion's detection losses under that assignment
    (``SetCriterion.stack_losses``: focal class loss on all group queries, unassigned ones
    towards "no object", L1/GIoU on the assigned ones, divided by the number of objects), summed
    over stages and multiplied by ``weight`` (lambda3).

    Training only: the group exists in the student's training pass; evaluation uses the student
    alone. When the widths differ, a learnable linear adapter maps the teacher's content
    (C_T -> C_S); anchors are boxes and need none. Teacher inputs are constants (no gradient).

    Args:
        student_channels: C_S. teacher_channels: C_T.
        weight: lambda3.

    Returns (forward): ``loss_kd_ad_class``, ``loss_kd_ad_bbox``, ``loss_kd_ad_giou``.
    """

    needs_teacher_matching = True
    teacher_families = ("detr",)
    student_families = ("detr",)
    group_name = "detrdistill_teacher_queries"

    def __init__(self, *, student_channels: int, teacher_channels: int, weight: float = 1.0):
        super().__init__()
        self.adapter = (nn.Linear(teacher_channels, student_channels) if teacher_channels != student_channels
                        else nn.Identity())
        self.weight = weight

    def student_groups(self, step: DistillStep, enc, det: QueryGroup) -> List[QueryGroup]:
        teacher_queries = step.teacher.record.queries
        content = self.adapter(teacher_queries.content.detach().to(det.content.dtype))
        anchors = teacher_queries.anchor_logits.detach().to(det.anchor_logits.dtype)
        return [QueryGroup(self.group_name, content, anchors)]

    def forward(self, step: DistillStep) -> Dict[str, torch.Tensor]:
        matching = step.teacher.record.matching
        if matching is None:
            raise RuntimeError("QueryPriorAssignmentDistill needs the teacher's matching (needs_teacher_matching)")
        out = step.student.record.groups[self.group_name]
        criterion = step.student.model.criterion
        num_boxes = criterion.num_boxes(step.targets, out.logits.device)
        losses = criterion.stack_losses(out.logits, out.boxes, step.targets, [matching] * out.logits.shape[0],
                                        num_boxes)
        return {f"loss_kd_ad_{k[len('loss_'):]}": self.weight * v.sum() for k, v in losses.items()}
