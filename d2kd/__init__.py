"""d2kd: knowledge distillation of detection transformers on Detectron2."""

__version__ = "0.1.0"
