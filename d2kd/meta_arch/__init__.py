"""Distillation meta-architectures: a frozen teacher and a student in one detectron2 model."""
from .base import DistillerBase, student_weights
from .teacher import FrozenTeacher, TeacherCheckpointError, check_state_dict_fits

__all__ = [k for k in globals().keys() if not k.startswith("_")]
