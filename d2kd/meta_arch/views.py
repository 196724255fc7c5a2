"""Moved to :mod:`d2kd.distill.views` (what the methods see lives below the meta-architectures);
the names stay importable from here."""
from d2kd.distill.views import FAMILIES, DetectorView, group_hook, model_family, rcnn_predict_at, run_detector

__all__ = ["FAMILIES", "DetectorView", "group_hook", "model_family", "rcnn_predict_at", "run_detector"]
