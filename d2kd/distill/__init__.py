"""Distillation methods, one file each; :mod:`d2kd.distill.base` is their interface."""
from .base import DistillLoss, DistillStep

__all__ = [k for k in globals().keys() if not k.startswith("_")]
