# DETRDistill's three losses (Chang et al. 2023) with the paper's weights (Sec. 4.4: lambda1 = 1,
# lambda2 = 20, lambda3 = 1), for the configs/detrdistill/*.py and combined configs. Channel and
# level counts are read from the distiller's student and teacher by interpolation.
from detectron2.config import LazyCall as L

from d2kd.distill.detrdistill import HungarianLogitsDistill, QueryPriorAssignmentDistill, TargetAwareFeatureDistill

_CHANNELS = dict(student_channels="${model.student.embed_dim}", teacher_channels="${model.teacher.model.embed_dim}")


def detrdistill_losses(components=("ld", "fd", "ad")) -> dict:
    """``{name: LazyCall}`` of the chosen DETRDistill components, for ``model.losses``:
    ``"ld"`` Hungarian-matched logits (soft class targets, score threshold 0.3), ``"fd"``
    target-aware feature distillation on every encoder-output level, ``"ad"`` query-prior
    assignment distillation."""
    every = {
        "ld": L(HungarianLogitsDistill)(weight=1.0, score_threshold=0.3, class_target="soft"),
        "fd": L(TargetAwareFeatureDistill)(num_levels="${model.student.num_feature_levels}", weight=20.0,
                                           **_CHANNELS),
        "ad": L(QueryPriorAssignmentDistill)(weight=1.0, **_CHANNELS),
    }
    unknown = set(components) - set(every)
    if unknown:
        raise ValueError(f"unknown DETRDistill components {sorted(unknown)}; choose from {sorted(every)}")
    return {name: every[name] for name in components}
