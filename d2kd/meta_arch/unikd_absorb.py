"""UniKD's absorbing stage (stage 1): a meta-architecture that trains the AKEs of
:mod:`d2kd.distill.unikd` on a frozen teacher's features (Lao et al., ICCV 2023, Sec. 3.2.2).

It lives with the meta-architectures (it runs a teacher and is a detectron2 model of its own);
the method, its AKEs and their design choices are in :mod:`d2kd.distill.unikd`.
"""
from typing import Dict, List, Mapping, Optional

import torch
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from d2kd.detr.criterion import SetCriterion
from d2kd.detr.matcher import HungarianMatcher
from d2kd.distill.unikd import AKEPair
from d2kd.distill.views import model_family, run_detector
from d2kd.layers import box_cxcywh_to_xyxy

from .base import _num_classes, normalized_targets
from .teacher import FrozenTeacher, TeacherHolder

__all__ = ["UniKDAbsorb"]


@META_ARCH_REGISTRY.register()
class UniKDAbsorb(TeacherHolder):
    """UniKD's absorbing stage: trains the AKEs on a frozen teacher's features (Eq. 6).

    Training returns ``loss_{ct,pos}_{class,bbox,giou}``: the content AKE's FFN(z_ct) Hungarian-
    matched to the ground truth, the positional AKE's FFN(z_pos) under the known assignment
    (module doc). Evaluation returns the content AKE's predictions as detections (top
    ``select_topk`` query-class pairs by sigmoid score), so the evaluator reports how much the AKE
    absorbed (the "Teacher" AP of Tab. 6f). The teacher is held unregistered (not in
    ``parameters()``, ``state_dict()``, the optimizer or DDP): the checkpoint is ``ake.*`` only.

    Args:
        teacher: the frozen teacher (any d2kd DETR or detectron2 Faster R-CNN / RetinaNet / FCOS).
        ake: the AKEs to train.
        loss_weights: of ``loss_class`` / ``loss_bbox`` / ``loss_giou`` (Deformable DETR: 2/5/2).
        matcher: for the content queries (Deformable DETR's 2/5/2 costs by default).
        focal_alpha, focal_gamma: of the focal class loss.
        select_topk: detections per image at evaluation.
    """

    def __init__(self, *, teacher: FrozenTeacher, ake: AKEPair, loss_weights: Optional[Mapping[str, float]] = None,
                 matcher: Optional[HungarianMatcher] = None, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 select_topk: int = 100):
        super().__init__()
        if not isinstance(teacher, FrozenTeacher):
            raise TypeError(f"teacher must be a d2kd.meta_arch.FrozenTeacher, got {type(teacher).__name__}")
        if model_family(teacher.model) == "other":
            raise TypeError(f"UniKDAbsorb cannot run a {type(teacher.model).__name__} teacher: supported are "
                            "d2kd DINO / DeformableDETR and detectron2 GeneralizedRCNN, RetinaNet, FCOS")
        num_t = _num_classes(teacher.model)
        if num_t is not None and num_t != ake.num_classes:
            raise ValueError(f"the AKEs have {ake.num_classes} classes, the teacher {num_t}: set the AKE's "
                             "num_classes to the teacher's")
        self.hold_teacher(teacher)
        self.ake = ake
        weights = {"loss_class": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}
        weights.update(loss_weights or {})
        matcher = matcher if matcher is not None else HungarianMatcher(2.0, 5.0, 2.0)
        self.criterion = SetCriterion(ake.num_classes, matcher, weights, focal_alpha, focal_gamma)
        self.select_topk = select_topk

    @property
    def device(self) -> torch.device:
        return self.ake.strides.device

    def forward(self, batched_inputs):
        with self.teacher.autocast() as teacher:
            _, view = run_detector(teacher, self.teacher.prepare_inputs(batched_inputs), with_losses=False)
        pyr = self.ake.teacher_pyramid(view)
        q_ct, ref_ct = self.ake.ct.generate(pyr)
        logits, boxes = self.ake.ct.predict(self.ake.ct.extract(q_ct, ref_ct, pyr), ref_ct)
        if not self.training:
            return self.inference(logits, boxes, view.images.image_sizes, batched_inputs)
        targets = normalized_targets(batched_inputs, self.device)
        losses = self.content_losses(logits, boxes, targets)
        hat, _, gt_index = self.ake.sample_boxes(targets)
        q_pos, _ = self.ake.pos.generate(pyr, hat)
        logits_pos, boxes_pos = self.ake.pos.predict(self.ake.pos.extract(q_pos, hat, pyr), hat)
        losses.update(self.positional_losses(logits_pos, boxes_pos, targets, gt_index))
        return losses

    def content_losses(self, logits, boxes, targets) -> Dict[str, torch.Tensor]:
        """Eq. 6 for AKE_ct: bipartite matching of FFN(z_ct) [B, N, K] / [B, N, 4] to the GT."""
        indices = self.criterion.matcher(logits, boxes, targets)
        num = self.criterion.num_boxes(targets, logits.device)
        losses = self.criterion.loss_for_indices(logits, boxes, targets, indices, num)
        return {k.replace("loss_", "loss_ct_"): v for k, v in losses.items()}

    def positional_losses(self, logits, boxes, targets, gt_index) -> Dict[str, torch.Tensor]:
        """Eq. 6 for AKE_pos under the known assignment: query i < N'_b is positive with ground
        truth ``gt_index[b][i]`` (sigma(i) = i), the rest negative. No matching."""
        kept = [{"labels": t["labels"][g], "boxes": t["boxes"][g]} for t, g in zip(targets, gt_index)]
        indices = [(torch.arange(len(g), device=logits.device),) * 2 for g in gt_index]
        num = self.criterion.num_boxes(kept, logits.device)
        losses = self.criterion.loss_for_indices(logits, boxes, kept, indices, num)
        return {k.replace("loss_", "loss_pos_"): v for k, v in losses.items()}

    def inference(self, logits, boxes, image_sizes, batched_inputs) -> List[Dict[str, Instances]]:
        """Top-k query-class pairs of FFN(z_ct), boxes in original-image pixels."""
        B, N, K = logits.shape
        scores, index = logits.sigmoid().flatten(1).topk(min(self.select_topk, N * K), dim=1)
        query, labels = index // K, index % K
        boxes = box_cxcywh_to_xyxy(boxes.gather(1, query[..., None].expand(-1, -1, 4)))
        results = []
        for b, (h, w) in enumerate(image_sizes):
            inst = Instances((h, w))
            inst.pred_boxes = Boxes(boxes[b] * boxes.new_tensor([w, h, w, h]))
            inst.scores = scores[b]
            inst.pred_classes = labels[b]
            x = batched_inputs[b]
            results.append({"instances": detector_postprocess(inst, x.get("height", h), x.get("width", w))})
        return results
