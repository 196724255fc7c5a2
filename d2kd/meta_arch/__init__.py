"""Distillation meta-architectures: a frozen teacher and a student in one detectron2 model."""
from .base import DistillerBase, normalized_targets, student_weights
from .distill_detr import DistillDETR
from .hetero_distill import HeteroDistill
from .teacher import FrozenTeacher, TeacherCheckpointError, check_state_dict_fits
from .unikd_absorb import UniKDAbsorb
from d2kd.distill.views import DetectorView, model_family, rcnn_predict_at, run_detector

__all__ = [k for k in globals().keys() if not k.startswith("_")]
