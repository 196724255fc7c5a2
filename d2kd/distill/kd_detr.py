"""KD-DETR (Wang et al., CVPR 2024): distillation at consistent distillation points.

DETR's detection queries differ between teacher and student (learned, or selected from each
model's own encoder), so their predictions cannot be compared one to one. KD-DETR decouples
distillation from detection: a separate set of *distillation points* — anchor boxes, each
turned into a query by the decoder (positional part from the box, content part zero) — is
decoded by both models, each on its own encoder memory, and the student's predictions at every
point mimic the teacher's predictions at the same point. (Only the paper's abstract is at hand, so
no equation numbers: the formulas follow the authors' released code, Myleswork/KD-DETR, and
every departure from it is stated.)

Points (per image, normalised cxcywh boxes of the unpadded input; two groups):

- **general**: drawn at random every step over the whole image, the same set for both models,
  so the student mimics the teacher everywhere, background included (:func:`sample_general_points`).
  Default ``"uniform"``: centres uniform over the image, side ``s`` log-uniform in
  ``size_range`` (fraction of the image side) and aspect ratio log-uniform in ``aspect_range``,
  boxes clipped to the image — every position and scale equally likely. ``"normal"`` is the
  reference implementation's choice: ``sigmoid(N(0, 1))`` for each of cx, cy, w, h, which
  concentrates the points around the centre of the image and on medium-to-large boxes; the
  reference also draws one set per batch for all its images (``share_points_across_batch``).
- **specific**: the teacher's own detection anchors (``det.anchor_logits``: DINO's top-k encoder
  proposals, Deformable DETR's learned anchors; the reference's "auxiliary reference points"),
  optionally only the first ``num_specific`` (DINO's proposals come ranked by the encoder's
  score, so these are the top-scoring ones). They concentrate on objects.

Both groups are clipped to the image once, where they are made, so every model decodes, pools or
predicts at exactly the same boxes (a Faster R-CNN student cannot pool outside the image) —
except the specific points when the teacher's detections are reused (below).

Teacher targets at the specific points (``reuse_teacher_detections``, default True): the specific
points *are* the teacher's detection queries, so its predictions there are its own detection
outputs (its learned content, among all its detection queries, as in plain inference); they are
read from its detection outputs and the teacher decodes the general group only. The specific points
are then the anchors exactly as the teacher decoded them, not clipped: a DETR student decodes any
box, and Faster R-CNN's RoIAlign pools a box that crosses the border as it is (zeros outside), so
every model still sees the same boxes. This is the teacher's best input (on the built-in DINO R-50
teacher, decoding its own anchors scores 13.9 AP with its learned content, 7.9 with the mean one,
6.6 with zero on the 33.7-AP teacher; see ``content``) and saves the teacher's second decoder pass
over those points (on the built-in DINO R-50 -> R-18, ``benchmarks/kd_step_cost.py``: see the
README). ``False``: the teacher decodes the clipped anchors again with ``content`` (the reference,
whose DAB-DETR teacher has no learned content to reuse).

The teacher runs in eval mode, so it never has denoising queries; the specific points are taken
from its detection group only (checked).

Isolation: the points are extra :class:`~d2kd.detr.queries.QueryGroup` objects (``sees=()``), so
the decoder's attention mask keeps them apart from the detection (and denoising) queries: the
student's detection outputs, its Hungarian matching and its detection losses are exactly those
of a run without KD-DETR. They are sampled once per step (``step.cache[name]``), in the first
hook that runs, and both models read them from there. The random draws use the method's own
generator (seeded from ``torch.initial_seed()`` and the process rank when built), so enabling
KD-DETR does not shift the global random stream the student's own sampling (RPN / RoI sampling,
denoising noise) draws from.

Losses (per group g, per student decoder layer d, against the teacher's *last* layer at the same
point; a student with fewer decoder layers than its teacher simply has fewer terms). With
``w_i = max_k sigmoid(t_ik)`` the teacher's best class score at point i (foreground
re-weighting, detached):

    L_g = sum_d  sum_i w_i [ l_cls(s_di, t_i) + 5 * mean_4 |b_di - b^T_i| + 2 * (1 - GIoU(b_di, b^T_i)) ]
                 / sum_i w_i

Each term is reported on its own (``loss_kd_kddetr_{general,specific}_{cls,bbox,giou}``) and
multiplied by the group's current weight (general-to-specific schedule, below).
``foreground_weighting=False`` sets every ``w_i = 1`` (the paper's "+reweight" ablation).
``normalization="reference"`` reduces the class term as the released code does,
``sum_d sum_i w_i mean_k l_dik`` (mean over the K classes, summed over points and layers, no
normaliser), the box terms staying weighted means.

Two configurations ship for the homogeneous DINO pairs. The default configs
(``configs/kd_detr/dino_R50_to_R18_builtin.py``, ``dino_R50_to_R18.py``, ``dino_R101_to_R50.py``)
are the published method (``use_reference_kd_detr`` in ``configs/common/kd_detr.py``: softmax KL
at T = 10, ``sigmoid(N(0, 1))`` points shared across the batch, constant weights 1 / 1, reference
normalisation, zero content, the teacher decoding its anchors again). d2kd's variant lives in
``*_variant*.py`` (this class's defaults, i.e. per-class binary KL at
T = 1, uniform per-image points, general 1 -> 0.5 / specific 0.5 -> 1, the teacher's detections
reused); the offline DINO -> DINO configs build on it. benchmarks/kd_gain.py compares the two.
The published method is the default because it distilled better on the built-in DINO R-50 ->
R-18 pair (400 student iterations, ``benchmarks/kd_gain.py``): 13.1 / 13.4 AP against the
variant's 10.7 / 11.8 (seeds 0 / 1, the 33.7-AP teacher, student alone 6.0 / 10.6), and 11.6 vs
9.1, 12.2 vs 12.2 on two earlier 17-18.5-AP teachers. The heterogeneous configs (Faster R-CNN,
RetinaNet, FCOS students) keep the variant, the only one measured there.

Class distillation ``l_cls``:

- ``"bce"`` (default): per class, the student's sigmoid probability mimics the teacher's,
  ``sum_k BCE(sigmoid(s_k / T), sigmoid(t_k / T)) - H(sigmoid(t_k / T))`` (times T^2; T = 1 by
  default), i.e. the KL divergence between the per-class Bernoulli distributions — the same
  gradient as BCE with soft targets, but zero when the student matches. Why the default: DINO
  and Deformable DETR are sigmoid/focal-loss detectors whose scores are independent per-class
  probabilities, and the absolute level of those probabilities ("is there an object here at
  all") is what the many background points of the general group teach. A softmax over the K
  logits is invariant to adding a constant to all of them, so the KL below cannot transfer it.
- ``"kl"``: the reference's ``T^2 KL(softmax(t / T) || softmax(s / T))`` with T = 10 (only the
  ranking of the classes at each point). The reference averages the KL over the K classes and
  sums over points without normalising; here it is the summed KL (so the weight does not depend
  on K) normalised by ``sum_i w_i`` as above.

Box terms follow the reference: L1 averaged over the four coordinates, GIoU on the cxcywh boxes
converted to corners. Default weights class 1, L1 5, GIoU 2 per group.

General-to-specific schedule: the two groups' weights move linearly over training
(``step.progress``) from their ``(start, end)`` values: by default general 1 -> 0.5 and specific
0.5 -> 1 over the whole schedule (a scalar keeps a weight constant; the reference trains with
both at 1). A group whose weight is 0 at both ends is switched off entirely (not sampled, not
decoded): ``general_weight=0`` is specific-only, ``specific_weight=0`` general-only. Counts do not
change over training (a fixed number of queries keeps the step cost constant).

Heterogeneous distillation (``HeteroDistill``, DINO / Deformable DETR teacher):

- **Faster R-CNN student** (``"rcnn"``): the same points (in the student's
  input pixels) are extra boxes for the student's box head (:func:`~d2kd.meta_arch.views.rcnn_predict_at`),
  outside its proposal sampling and its losses. Boxes: the student's box for the teacher's top
  class (its only box if class-agnostic), converted to cxcywh normalised by the unpadded image,
  L1 + GIoU to the teacher's boxes. Class, ``rcnn_class_target``:

  - ``"foreground"`` (default): the class *given foreground*,
    ``T^2 KL(softmax(log(p / sum_k p_k) / T) || softmax(s_fg / T))`` over the K object classes,
    with ``p`` the teacher's K sigmoid scores and the student's background logit left out, so its
    object-vs-background decision stays with its own ground-truth losses.
  - ``"with_background"``: ``p`` mapped to a (K + 1)-way distribution (background last, as
    detectron2): foreground mass ``m = max_k p_k`` split over the classes in proportion to
    ``p_k``, background ``1 - m``; ``T^2 KL(q_T || softmax(s / T))``.

  T = 1 by default (plain KL); same foreground weights as the DETR students. The paper does not
  say how a sigmoid teacher's scores become a softmax target; we chose by measurement.
  A focal-loss teacher's scores are low by construction (its true objects often score 0.3-0.6),
  so the (K + 1)-way map tells the student's softmax head that a box on an object is half
  background, against what its own classification loss teaches on the same boxes. On the
  built-in data (DINO R-50 teacher 33.7 AP -> Faster R-CNN R-18, 300 iterations,
  configs/kd_detr/dino_to_frcnn_builtin.py): student alone 14.3 / 16.4 AP (seeds 0 / 1),
  ``"with_background"`` 13.7 (seed 0, -0.6), ``"foreground"`` 18.2 / 18.9 (+3.9 / +2.6).
- **RetinaNet / FCOS students** (``"dense"``): a dense detector predicts only at its own anchors
  (FCOS: stride-sized boxes centred on its locations), so the points must be those anchors, not
  arbitrary boxes. With ``point_source="student_anchors"``, after the student's pass: general =
  a random subset of the student's anchors that lie wholly inside the image, specific = for each
  of the teacher's specific points, the inside anchor that overlaps it most; the teacher then
  decodes exactly these anchors in a separate decoder pass on its encoder memory
  (the same result as decoding them with its detection queries, by isolation). Both heads are
  sigmoid, so the class loss is the DETR one; boxes are the student's decoded regression at the
  anchor. FCOS's centerness is not distilled. Not available offline: the points depend on the
  student's anchors, which a teacher-only knowledge store cannot know.

Offline (``supports_offline``): :meth:`KDDETR.export_knowledge` stores, per image and group, the
points and the teacher's last-layer logits and boxes at them (all bounded: fp16 is fine). From
a store, the student decodes the stored points (general points included: they are fixed per
stored image instead of fresh each step) and the loss is computed against the stored
predictions, which gives the online loss for the same points.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.utils import comm

from d2kd.detr.queries import EncoderState, QueryGroup
from d2kd.layers import (
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    inverse_sigmoid,
    pairwise_box_iou,
)

from .base import DistillLoss, DistillStep

GROUPS = ("general", "specific")
CLASS_LOSSES = ("bce", "kl")
DISTRIBUTIONS = ("uniform", "normal")
POINT_SOURCES = ("boxes", "student_anchors")
CONTENTS = ("zero", "mean")
NORMALIZATIONS = ("weighted_mean", "reference")
RCNN_CLASS_TARGETS = ("foreground", "with_background")
_DEFAULT_TEMPERATURE = {"bce": 1.0, "kl": 10.0}

Schedule = Union[float, Sequence[float]]


# --------------------------------------------------------------------------------- points
def clip_boxes_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] normalised cxcywh boxes clipped to the image [0, 1]^2."""
    return box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes).clamp(0.0, 1.0))


def sample_general_points(
    num_images: int,
    num_points: int,
    *,
    distribution: str = "uniform",
    size_range: Sequence[float] = (0.02, 0.8),
    aspect_range: Sequence[float] = (1 / 3, 3.0),
    device=None,
    generator: Optional[torch.Generator] = None,
    share_across_batch: bool = False,
) -> torch.Tensor:
    """Random distillation points over the whole image.

    Args:
        distribution: ``"uniform"``: centres uniform in the image, box side
            ``s ~ logU(size_range)`` and aspect ratio ``a ~ logU(aspect_range)``
            (``w = s sqrt(a)``, ``h = s / sqrt(a)``); ``"normal"``: the reference's
            ``sigmoid(N(0, 1))`` for each of cx, cy, w, h.
        size_range, aspect_range: of the uniform distribution (sides as fractions of the image).
        share_across_batch: one set of points for every image of the batch (the reference draws
            one ``nn.Embedding(N, 4)`` per step and feeds it to every image).

    Returns:
        [num_images, num_points, 4] normalised cxcywh, clipped to the image.
    """
    shape = (1 if share_across_batch else num_images, num_points)
    if distribution == "uniform":
        lo, hi = (math.log(float(v)) for v in size_range)
        alo, ahi = (math.log(float(v)) for v in aspect_range)
        u = torch.rand(*shape, 4, device=device, generator=generator)
        side = torch.exp(lo + (hi - lo) * u[..., 2])
        aspect = torch.exp(alo + (ahi - alo) * u[..., 3])
        boxes = torch.stack([u[..., 0], u[..., 1], side * aspect.sqrt(), side / aspect.sqrt()], dim=-1)
    elif distribution == "normal":
        boxes = torch.randn(*shape, 4, device=device, generator=generator).sigmoid()
    else:
        raise ValueError(f"general point distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    return clip_boxes_cxcywh(boxes).expand(num_images, num_points, 4)


def _as_range(value: Schedule, what: str) -> Tuple[float, float]:
    if isinstance(value, (int, float)):
        return float(value), float(value)
    values = [float(v) for v in value]
    if len(values) != 2:
        raise ValueError(f"{what} must be a number or a (start, end) pair, got {value!r}")
    return values[0], values[1]


def general_to_specific_weights(
    progress: float,
    general_weight: Schedule = (1.0, 0.5),
    specific_weight: Schedule = (0.5, 1.0),
    anneal: Sequence[float] = (0.0, 1.0),
) -> Tuple[float, float]:
    """The (general, specific) group weights at ``progress`` (fraction of training done).

    Each weight goes linearly from its start to its end value while progress goes from
    ``anneal[0]`` to ``anneal[1]``, and stays constant outside; a scalar weight is constant.
    """
    begin, end = (float(v) for v in anneal)
    if end > begin:
        r = min(1.0, max(0.0, (progress - begin) / (end - begin)))
    else:
        r = 1.0 if progress >= end else 0.0
    out = []
    for value, what in ((general_weight, "general_weight"), (specific_weight, "specific_weight")):
        a, b = _as_range(value, what)
        out.append(a + (b - a) * r)
    return out[0], out[1]


# --------------------------------------------------------------------------------- losses
def sigmoid_class_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mode: str = "bce",
                               temperature: float = 1.0, class_mean: bool = False) -> torch.Tensor:
    """Per-point class distillation between two sigmoid (focal-loss) heads.

    Args:
        student_logits: [..., N, K]; teacher_logits: [N, K] or broadcastable (detached here).
        mode: ``"bce"``: ``T^2 sum_k [BCE(s_k/T, sigmoid(t_k/T)) - H(sigmoid(t_k/T))]`` (binary
            KL per class); ``"kl"``: ``T^2 KL(softmax(t/T) || softmax(s/T))`` over the K classes.
        class_mean: average the per-class terms over K instead of summing them (the reference).

    Returns:
        [..., N] loss per point (0 where the student's logits equal the teacher's).
    """
    t = (teacher_logits.detach().float() / temperature).expand_as(student_logits)
    s = student_logits.float() / temperature
    if mode == "bce":
        p = t.sigmoid()
        loss = (F.binary_cross_entropy_with_logits(s, p, reduction="none")
                - F.binary_cross_entropy_with_logits(t, p, reduction="none"))
    elif mode == "kl":
        log_p = t.log_softmax(-1)
        loss = log_p.exp() * (log_p - s.log_softmax(-1))
    else:
        raise ValueError(f"class loss must be one of {CLASS_LOSSES}, got {mode!r}")
    return (loss.mean(-1) if class_mean else loss.sum(-1)) * temperature**2


def sigmoid_to_softmax_targets(teacher_logits: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Maps K independent sigmoid scores to a (K + 1)-way distribution, background last.

    ``p = sigmoid(t)``, ``m = max_k p_k``: ``q_k = m p_k / sum_j p_j`` and ``q_K = 1 - m``.

    Args:
        teacher_logits: [..., K].

    Returns:
        [..., K + 1] probabilities (rows sum to 1).
    """
    p = teacher_logits.detach().float().sigmoid()
    m = p.amax(-1, keepdim=True)
    fg = m * p / p.sum(-1, keepdim=True).clamp(min=eps)
    return torch.cat([fg, 1.0 - m], dim=-1)


def softmax_class_distillation(student_logits: torch.Tensor, target_probs: torch.Tensor,
                               temperature: float = 1.0, eps: float = 1e-12) -> torch.Tensor:
    """``T^2 KL(q_T || softmax(s / T))`` per point, ``q_T = softmax(log(q) / T)``.

    Args:
        student_logits: [..., N, K + 1] (detectron2 softmax head, background last).
        target_probs: [N, K + 1] or broadcastable, e.g. :func:`sigmoid_to_softmax_targets`.

    Returns:
        [..., N].
    """
    log_q = (target_probs.detach().float().clamp(min=eps).log() / temperature).log_softmax(-1)
    log_q = log_q.expand_as(student_logits)
    loss = log_q.exp() * (log_q - (student_logits.float() / temperature).log_softmax(-1))
    return loss.sum(-1) * temperature**2


def box_distillation(student_boxes: torch.Tensor,
                     teacher_boxes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """L1 (mean over the 4 coordinates) and ``1 - GIoU`` per point.

    Args:
        student_boxes: [..., N, 4] normalised cxcywh; teacher_boxes: [N, 4] or broadcastable.

    Returns:
        ``(l1 [..., N], giou [..., N])``.
    """
    t = teacher_boxes.detach().float().expand_as(student_boxes)
    s = student_boxes.float()
    l1 = (s - t).abs().mean(-1)
    giou = 1.0 - generalized_box_iou(box_cxcywh_to_xyxy(s), box_cxcywh_to_xyxy(t))
    return l1, giou


def weighted_point_mean(values: torch.Tensor, weights: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``sum_d sum_i w_i v_di / sum_i w_i``: a foreground-weighted mean over the points of every
    layer d, summed over the layers.

    Args:
        values: [D, *P] per layer and point; weights: [*P] (P: points, e.g. images x points).
    """
    w = weights.detach().float()
    dims = tuple(range(1, values.dim()))
    return ((values * w).sum(dims) / w.sum().clamp(min=eps)).sum()


def weighted_point_sum(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_d sum_i w_i v_di``: the reference's reduction of its class term (no normaliser).

    Args:
        values: [D, *P]; weights: [*P].
    """
    return (values * weights.detach().float()).sum()


def foreground_weights(teacher_logits: torch.Tensor) -> torch.Tensor:
    """[..., K] teacher logits -> [...] its best class probability (sigmoid)."""
    return teacher_logits.detach().float().sigmoid().amax(-1)


# --------------------------------------------------------------------------------- method
class KDDETR(DistillLoss):
    """KD-DETR: the student mimics the teacher at shared distillation points (module doc).

    Args:
        name: this method's key in the distiller's ``losses``: the ``step.cache`` key, the
            offline knowledge key (``step.knowledge[b][name]``), the prefix of the query-group
            names and, without underscores, of the loss keys (``loss_kd_kddetr_*``).
        num_general: general points per image (0: none).
        num_specific: specific points per image: the first ``num_specific`` of the teacher's
            detection anchors (its top-scoring encoder proposals for DINO); None: all of them.
        general_weight, specific_weight: group weights, a constant or ``(start, end)`` for the
            general-to-specific schedule (linear in ``step.progress`` over ``anneal``); a group
            with weight 0 at both ends is off.
        anneal: ``(begin, end)`` fractions of training over which the weights move.
        distribution, size_range, aspect_range: of the general points (:func:`sample_general_points`).
        class_loss: ``"bce"`` (default) or ``"kl"`` (reference), for sigmoid students; a Faster
            R-CNN student's class term is set by ``rcnn_class_target``.
        temperature: of the class loss; None: 1 for ``"bce"`` and the R-CNN map, 10 for ``"kl"``.
        rcnn_class_target: Faster R-CNN students: ``"foreground"`` (default: the class distribution
            given foreground) or ``"with_background"`` (the (K + 1)-way map); module doc.
        cls_weight, bbox_weight, giou_weight: term weights (reference: 1, 5, 2).
        content: content part of the point queries: ``"mean"`` (default: each model's mean
            detection content, detached) or ``"zero"`` (the reference, whose DAB-DETR queries have
            zero content). Chosen by measurement on the built-in DINO R-50 teacher, decoding its
            own top-k anchors with each content on the first 200 val images
            (``benchmarks/kd_detr_content.py``; AP against the whole val set, so only the ranking
            counts): learned content 7.8, mean 4.6, zero 4.0 (1000 iterations, 18.5-AP teacher);
            13.9, 7.9, 6.6 (2000 iterations, 33.7 AP). DINO never saw zero content in training;
            the mean of its learned contents stays closer to what it did see. The published
            method (the homogeneous default configs) keeps zero and still distils better on the
            built-in pair (README), so the content is not what decides the gain there.
        point_source: ``"boxes"`` (DETR and Faster R-CNN students) or ``"student_anchors"``
            (RetinaNet / FCOS students: points are the student's own anchors).
        share_points_across_batch: one set of general points for the whole batch (reference)
            instead of one per image.
        foreground_weighting: weight every point by the teacher's best class score ``w_i``
            (reference: always on); off: ``w_i = 1``.
        normalization: ``"weighted_mean"``: every term is ``sum_i w_i l_i / sum_i w_i`` per layer;
            ``"reference"``: as the released code, the class term is ``sum_i w_i mean_k l_ik``
            (summed over points and layers, averaged over the classes, no normaliser) and the box
            terms are weighted means.
        reuse_teacher_detections: the teacher's targets at the specific points are its detection
            outputs, not a second decode of them with ``content`` (module doc; the reference: off).
    """

    teacher_families = ("detr",)
    student_families = ("detr", "rcnn", "dense")
    supports_offline = True
    # What export_knowledge depends on (d2kd.offline checks a store against these). The group
    # weights are left out so that one store serves every schedule; a group switched off when
    # dumping is simply absent (reading it fails with the missing key's name).
    knowledge_args = ("name", "num_general", "num_specific", "distribution", "size_range", "aspect_range",
                      "content", "point_source", "share_points_across_batch", "reuse_teacher_detections")

    def __init__(
        self,
        *,
        name: str = "kd_detr",
        num_general: int = 300,
        num_specific: Optional[int] = None,
        general_weight: Schedule = (1.0, 0.5),
        specific_weight: Schedule = (0.5, 1.0),
        anneal: Sequence[float] = (0.0, 1.0),
        distribution: str = "uniform",
        size_range: Sequence[float] = (0.02, 0.8),
        aspect_range: Sequence[float] = (1 / 3, 3.0),
        class_loss: str = "bce",
        temperature: Optional[float] = None,
        cls_weight: float = 1.0,
        bbox_weight: float = 5.0,
        giou_weight: float = 2.0,
        content: str = "mean",
        point_source: str = "boxes",
        share_points_across_batch: bool = False,
        foreground_weighting: bool = True,
        normalization: str = "weighted_mean",
        reuse_teacher_detections: bool = True,
        rcnn_class_target: str = "foreground",
    ):
        super().__init__()
        for value, allowed, what in ((class_loss, CLASS_LOSSES, "class_loss"), (distribution, DISTRIBUTIONS,
                                     "distribution"), (content, CONTENTS, "content"),
                                     (point_source, POINT_SOURCES, "point_source"),
                                     (normalization, NORMALIZATIONS, "normalization"),
                                     (rcnn_class_target, RCNN_CLASS_TARGETS, "rcnn_class_target")):
            if value not in allowed:
                raise ValueError(f"KDDETR {what} must be one of {allowed}, got {value!r}")
        if num_specific is not None and num_specific < 1:
            raise ValueError("num_specific must be None (all teacher queries) or positive")
        self.name = name
        self.loss_prefix = "loss_kd_" + name.replace("_", "")
        self.num_general = int(num_general)
        self.num_specific = num_specific
        self.general_weight = _as_range(general_weight, "general_weight")
        self.specific_weight = _as_range(specific_weight, "specific_weight")
        self.anneal = tuple(float(v) for v in anneal)
        self.distribution = distribution
        self.size_range = tuple(float(v) for v in size_range)
        self.aspect_range = tuple(float(v) for v in aspect_range)
        self.class_loss = class_loss
        self.temperature = float(temperature) if temperature is not None else None
        self.term_weights = {"cls": float(cls_weight), "bbox": float(bbox_weight), "giou": float(giou_weight)}
        self.content = content
        self.point_source = point_source
        self.share_points_across_batch = bool(share_points_across_batch)
        self.foreground_weighting = bool(foreground_weighting)
        self.normalization = normalization
        self.reuse_teacher_detections = bool(reuse_teacher_detections)
        self.rcnn_class_target = rcnn_class_target
        enabled = {"general": self.num_general > 0 and any(self.general_weight),
                   "specific": any(self.specific_weight)}
        self.groups = tuple(g for g in GROUPS if enabled[g])
        if not self.groups:
            raise ValueError("KDDETR has no distillation points: both groups are off")
        # The random points' own generator (module doc); an attribute, so that an offline dump
        # can reseed it per batch like every other generator.
        self.generator = torch.Generator().manual_seed((torch.initial_seed() + comm.get_rank()) % 2**63)

    # ----------------------------------------------------------------- schedule
    def group_weights(self, progress: float) -> Dict[str, float]:
        """``{group: weight}`` of the enabled groups at ``progress``."""
        g, s = general_to_specific_weights(progress, self.general_weight, self.specific_weight, self.anneal)
        return {k: v for k, v in (("general", g), ("specific", s)) if k in self.groups}

    def group_name(self, group: str) -> str:
        return f"{self.name}_{group}"

    # ----------------------------------------------------------------- points
    def _stored(self, step: DistillStep, key: str, device) -> torch.Tensor:
        """[B, ...] one stored tensor of every image, float32 on ``device``."""
        try:
            per_image = [k[self.name][key] for k in step.knowledge]
        except KeyError as e:
            raise KeyError(f"KD-DETR: no stored knowledge {key!r} under {self.name!r} (the method's "
                           f"name); stored methods: {sorted(step.knowledge[0])}") from e
        return torch.stack([t.to(device=device, dtype=torch.float32) for t in per_image])

    def points(self, step: DistillStep, det: Optional[QueryGroup] = None, device=None) -> Dict[str, torch.Tensor]:
        """``{group: [B, N_g, 4]}`` normalised cxcywh points of this step, made once.

        Online, the first call (the teacher's hook) samples the general points and takes the
        specific ones from the teacher's detection queries ``det``; offline, both come from the
        knowledge store.
        """
        if self.name in step.cache:
            return step.cache[self.name]
        if step.knowledge is not None:
            out = {g: self._stored(step, f"{g}_points", device) for g in self.groups}
        else:
            if det is None:
                raise RuntimeError("KD-DETR: the distillation points are made in the teacher's pass, "
                                   "which did not run (is the teacher a d2kd DETR?)")
            B = det.anchor_logits.shape[0]
            out = {}
            if "general" in self.groups:
                out["general"] = sample_general_points(
                    B, self.num_general, distribution=self.distribution, size_range=self.size_range,
                    aspect_range=self.aspect_range, generator=self.generator,
                    share_across_batch=self.share_points_across_batch).to(det.anchor_logits.device)
            if "specific" in self.groups:
                anchors = det.anchor_logits.detach().float()
                if self.num_specific is not None:
                    anchors = anchors[:, : self.num_specific]
                # Clipped here, once: every model then sees exactly the same boxes. Reused
                # detections are the teacher's unclipped anchors (module doc).
                boxes = anchors.sigmoid()
                out["specific"] = boxes if self._reuses_detections else clip_boxes_cxcywh(boxes)
        step.cache[self.name] = out
        return out

    def _query_group(self, group: str, points: torch.Tensor, det: QueryGroup, width: int) -> QueryGroup:
        B, N, _ = points.shape
        if self.content == "zero":
            content = points.new_zeros(B, N, width)
        else:
            content = det.content.detach().mean(1, keepdim=True).expand(B, N, width)
        content = content.to(det.content.dtype)
        return QueryGroup(self.group_name(group), content, inverse_sigmoid(points).to(det.anchor_logits.dtype))

    @property
    def _reuses_detections(self) -> bool:
        """Whether the teacher's targets at the specific points are its detection outputs."""
        return self.reuse_teacher_detections and self.point_source == "boxes" and "specific" in self.groups

    def _groups(self, step: DistillStep, enc: EncoderState, det: QueryGroup, points,
                groups: Sequence[str]) -> List[QueryGroup]:
        return [self._query_group(g, points[g], det, enc.memory.shape[-1]) for g in groups]

    def teacher_groups(self, step: DistillStep, enc: EncoderState, det: QueryGroup) -> List[QueryGroup]:
        if self.point_source == "student_anchors":
            return []  # decoded after the student's pass, at its anchors
        groups = [g for g in self.groups if not (g == "specific" and self._reuses_detections)]
        return self._groups(step, enc, det, self.points(step, det), groups)

    def student_groups(self, step: DistillStep, enc: EncoderState, det: QueryGroup) -> List[QueryGroup]:
        if self.point_source == "student_anchors":
            raise ValueError("KDDETR point_source='student_anchors' is for RetinaNet / FCOS students; "
                             "a DETR student takes point_source='boxes'")
        return self._groups(step, enc, det, self.points(step, device=enc.memory.device), self.groups)

    # ----------------------------------------------------------------- teacher side
    def _check_teacher(self, step: DistillStep) -> None:
        record = step.teacher.record
        if step.teacher.model.training or record is None or record.dn_meta is not None or "dn" in record.groups:
            raise RuntimeError("KD-DETR needs a DETR teacher in eval mode (no denoising queries may "
                               "become distillation points); wrap it in FrozenTeacher")

    def teacher_predictions(self, step: DistillStep, device=None) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
        """``{group: (logits [B, N, K], boxes [B, N, 4])}``: the teacher's last decoder layer at the
        points, from its pass (online) or from the store (offline)."""
        if step.teacher is None:
            if step.knowledge is None:
                raise ValueError("KD-DETR: the step has neither a teacher nor stored knowledge")
            return {g: (self._stored(step, f"{g}_logits", device), self._stored(step, f"{g}_boxes", device))
                    for g in self.groups}
        self._check_teacher(step)
        out = {}
        for g in self.groups:
            if g == "specific" and self._reuses_detections:
                decoded, n = step.teacher.record.outputs, self.points(step)[g].shape[1]
                out[g] = (decoded.logits[-1, :, :n].detach().float(), decoded.boxes[-1, :, :n].detach().float())
                continue
            decoded = step.teacher.record.groups[self.group_name(g)]
            out[g] = (decoded.logits[-1].detach().float(), decoded.boxes[-1].detach().float())
        return out

    def export_knowledge(self, step: DistillStep) -> List[Dict[str, torch.Tensor]]:
        """Per image ``{"<group>_points" [N, 4], "<group>_logits" [N, K], "<group>_boxes" [N, 4]}``
        for the enabled groups (float32; every value is bounded, so fp16 storage is fine)."""
        if self.point_source == "student_anchors":
            raise NotImplementedError("KD-DETR with point_source='student_anchors' cannot be distilled "
                                      "offline: its points are the student's anchors")
        points = self.points(step)
        preds = self.teacher_predictions(step)
        B = next(iter(points.values())).shape[0]
        out = []
        for b in range(B):
            item = {}
            for g in self.groups:
                item[f"{g}_points"] = points[g][b].detach().float()
                item[f"{g}_logits"] = preds[g][0][b]
                item[f"{g}_boxes"] = preds[g][1][b]
            out.append(item)
        return out

    # ----------------------------------------------------------------- loss
    def forward(self, step: DistillStep) -> Dict[str, torch.Tensor]:
        view = step.student
        if view.family == "dense":
            per_group = self._dense_terms(step)
        else:
            if self.point_source == "student_anchors":
                raise ValueError(f"KDDETR point_source='student_anchors' needs a RetinaNet / FCOS student, "
                                 f"got a {view.family} one")
            device = view.images.tensor.device
            teacher = self.teacher_predictions(step, device)
            if view.family == "detr":
                per_group = {g: self._detr_terms(view, g, *teacher[g]) for g in self.groups}
            else:
                points = self.points(step, device=device)
                per_group = {g: self._rcnn_terms(view, points[g], *teacher[g]) for g in self.groups}
        weights = self.group_weights(step.progress)
        losses = {}
        for g, terms in per_group.items():
            for term, value in terms.items():
                losses[f"{self.loss_prefix}_{g}_{term}"] = weights[g] * self.term_weights[term] * value
        return losses

    def _point_weights(self, t_logits: torch.Tensor) -> torch.Tensor:
        """[B, N] weight of every point: the teacher's best class score, or 1."""
        if self.foreground_weighting:
            return foreground_weights(t_logits)
        return torch.ones(t_logits.shape[:-1], device=t_logits.device)

    def _reduce(self, cls, l1, giou, w) -> Dict[str, torch.Tensor]:
        """The three terms from per-layer, per-point values [D, B, N] and weights [B, N]."""
        reduce_cls = weighted_point_sum if self.normalization == "reference" else weighted_point_mean
        return {"cls": reduce_cls(cls, w), "bbox": weighted_point_mean(l1, w),
                "giou": weighted_point_mean(giou, w)}

    def _sigmoid_terms(self, s_logits, s_boxes, t_logits, t_boxes) -> Dict[str, torch.Tensor]:
        """Terms for a sigmoid student: s_* [D, B, N, ...], t_* [B, N, ...]."""
        temperature = self.temperature or _DEFAULT_TEMPERATURE[self.class_loss]
        cls = sigmoid_class_distillation(s_logits, t_logits, self.class_loss, temperature,
                                         class_mean=self.normalization == "reference")
        l1, giou = box_distillation(s_boxes, t_boxes)
        return self._reduce(cls, l1, giou, self._point_weights(t_logits))

    def _detr_terms(self, view, group, t_logits, t_boxes):
        decoded = view.record.groups[self.group_name(group)]
        return self._sigmoid_terms(decoded.logits, decoded.boxes, t_logits, t_boxes)

    def _rcnn_terms(self, view, points, t_logits, t_boxes):
        """Faster R-CNN student: its box head at the points (as made by ``points``, in input pixels)."""
        from .views import rcnn_predict_at

        B, N, _ = points.shape
        scales = [points.new_tensor([w, h, w, h]) for h, w in view.images.image_sizes]
        boxes = [box_cxcywh_to_xyxy(points[b]) * scales[b] for b in range(B)]
        logits, decoded = rcnn_predict_at(view, boxes)  # [B*N, K+1], [B*N, K', 4]
        decoded = decoded.view(B, N, -1, 4)
        if decoded.shape[2] > 1:  # class-specific regression: the teacher's top class
            top = t_logits.argmax(-1)
            decoded = decoded.gather(2, top[..., None, None].expand(B, N, 1, 4))
        s_boxes = box_xyxy_to_cxcywh(decoded[:, :, 0] / torch.stack(scales)[:, None])
        temperature = self.temperature or 1.0
        logits = logits.view(B, N, -1)
        if self.rcnn_class_target == "foreground":
            p = t_logits.detach().float().sigmoid()
            cls = softmax_class_distillation(logits[..., :-1], p / p.sum(-1, keepdim=True), temperature)
        else:
            cls = softmax_class_distillation(logits, sigmoid_to_softmax_targets(t_logits), temperature)
        if self.normalization == "reference":
            cls = cls / logits.shape[-1]  # the reference's mean over the classes
        l1, giou = box_distillation(s_boxes, t_boxes)
        return self._reduce(cls[None], l1[None], giou[None], self._point_weights(t_logits))

    def _dense_terms(self, step: DistillStep):
        """RetinaNet / FCOS student: points are its anchors, decoded by the teacher afterwards."""
        if self.point_source != "student_anchors":
            raise ValueError("a RetinaNet / FCOS student needs KDDETR(point_source='student_anchors'): "
                             "it predicts only at its own anchors")
        if step.teacher is None:
            raise NotImplementedError("KD-DETR with a dense student cannot be distilled offline: its "
                                      "points are the student's anchors")
        self._check_teacher(step)
        view, record = step.student, step.teacher.record
        model = view.model
        K = record.outputs.logits.shape[-1]
        anchors = torch.cat([a.tensor for a in model.anchor_generator(view.features)])  # [M, 4] xyxy px
        preds = view.extras["predictions"]
        logits = torch.cat([permute_to_N_HWA_K(x, K) for x in preds[0]], dim=1)  # [B, M, K]
        deltas = torch.cat([permute_to_N_HWA_K(x, 4) for x in preds[1]], dim=1)  # [B, M, 4]
        B = logits.shape[0]
        scales = torch.stack([anchors.new_tensor([w, h, w, h]) for h, w in view.images.image_sizes])  # [B, 4]
        norm_anchors = box_xyxy_to_cxcywh(anchors[None] / scales[:, None])  # [B, M, 4]
        # Only anchors that lie wholly inside the image are points: the student predicts at its
        # anchor as it is, and the teacher decodes the same box (its clip below is then a no-op).
        inside = [_inside_anchors(norm_anchors[b]) for b in range(B)]
        index = {}
        if "general" in self.groups:
            index["general"] = torch.stack([_random_inside(inside[b], self.num_general, self.generator)
                                            for b in range(B)])
        if "specific" in self.groups:
            spec = record.queries.anchor_logits.detach().float().sigmoid()
            if self.num_specific is not None:
                spec = spec[:, : self.num_specific]
            index["specific"] = torch.stack([inside[b][_best_anchor(spec[b], norm_anchors[b][inside[b]])]
                                             for b in range(B)])
        teacher_model, enc = step.teacher.model, record.enc
        out = {}
        for g, idx in index.items():
            points = clip_boxes_cxcywh(norm_anchors.gather(1, idx[..., None].expand(-1, -1, 4)))
            with torch.no_grad():
                decoded = teacher_model.decode(enc, [self._query_group(g, points, record.queries,
                                                                       enc.memory.shape[-1])])
            decoded = decoded[self.group_name(g)]
            s_logits = logits.gather(1, idx[..., None].expand(-1, -1, K))
            s_deltas = deltas.gather(1, idx[..., None].expand(-1, -1, 4))
            s_xyxy = model.box2box_transform.apply_deltas(s_deltas.reshape(-1, 4), anchors[idx.reshape(-1)])
            s_boxes = box_xyxy_to_cxcywh(s_xyxy.view(B, -1, 4) / scales[:, None])
            out[g] = self._sigmoid_terms(s_logits[None], s_boxes[None], decoded.logits[-1].float(),
                                         decoded.boxes[-1].float())
        return out


def _inside_anchors(norm_anchors: torch.Tensor) -> torch.Tensor:
    """Indices of the anchors ([M, 4] normalised cxcywh) lying wholly inside the image; if there
    are none (an image smaller than every anchor), of those centred inside; else of all."""
    xyxy = box_cxcywh_to_xyxy(norm_anchors)
    eps = 1e-6
    for keep in ((xyxy[:, :2] >= -eps).all(-1) & (xyxy[:, 2:] <= 1 + eps).all(-1),
                 ((norm_anchors[:, :2] > 0) & (norm_anchors[:, :2] < 1)).all(-1)):
        index = keep.nonzero()[:, 0]
        if index.numel():
            return index
    return torch.arange(norm_anchors.shape[0], device=norm_anchors.device)


def _random_inside(inside: torch.Tensor, num: int, generator: torch.Generator) -> torch.Tensor:
    """[num] random entries of ``inside`` (anchor indices), without replacement when there are
    enough; drawn on the CPU with ``generator``."""
    if inside.numel() >= num:
        pick = torch.randperm(inside.numel(), generator=generator)[:num]
    else:
        pick = torch.randint(inside.numel(), (num,), generator=generator)
    return inside[pick.to(inside.device)]


def _best_anchor(boxes: torch.Tensor, anchors: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """For each of ``boxes`` [N, 4], the index of the anchor ([M, 4], both normalised cxcywh)
    overlapping it most; chunked, since M is ~10^5 on COCO."""
    anchors_xyxy = box_cxcywh_to_xyxy(anchors)
    out = [pairwise_box_iou(box_cxcywh_to_xyxy(part), anchors_xyxy)[0].argmax(-1) for part in boxes.split(chunk)]
    return torch.cat(out) if out else boxes.new_zeros(0, dtype=torch.long)
