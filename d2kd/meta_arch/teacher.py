"""The frozen teacher of a distillation run.

A :class:`FrozenTeacher` wraps a fully built detector, loads its weights strictly and freezes it:
eval mode for good, ``requires_grad=False`` everywhere, ``torch.no_grad`` around every call.
The distillation meta-architectures keep it *outside* their registered sub-modules (see
:class:`d2kd.meta_arch.base.DistillerBase`), so the teacher's parameters are never seen by the
optimizer, by DDP (no gradient all-reduce, no find-unused-parameters noise), or by the
checkpointer (a distillation checkpoint holds the student and the adapters only; the teacher is
re-read from its own checkpoint).
"""
import logging
import os
from typing import Dict, Mapping, Optional

import torch
from torch import nn

from d2kd.distill.frozen import TeacherCheckpointError, check_state_dict_fits

__all__ = ["FrozenTeacher", "TeacherHolder", "TeacherCheckpointError", "check_state_dict_fits"]

logger = logging.getLogger(__name__)

_AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _read_state_dict(path: str, model: Optional[nn.Module] = None) -> Dict[str, torch.Tensor]:
    """Reads the model weights of ``path``: a d2kd/detectron2 ``.pth``, a detectron2 ``.pkl``, a
    release ``.pth`` (DINO: IDEA-Research, detrex; detrex Deformable DETR) or a Hugging Face model
    folder (the last two converted for ``model``, see :mod:`d2kd.convert`)."""
    if os.path.isdir(path):
        from d2kd.convert import ConversionError, load_hf_for_model

        try:
            return load_hf_for_model(path, model)
        except ConversionError as e:
            raise TeacherCheckpointError(f"teacher checkpoint {path!r}: {e}") from e
    if not os.path.isfile(path):
        raise TeacherCheckpointError(
            f"teacher checkpoint not found: {path!r} (set model.teacher.weights to the "
            "model_final.pth of a trained teacher run)"
        )
    try:
        if path.endswith(".pkl"):  # detectron2 model-zoo format: numpy arrays, d2 key names
            import pickle

            with open(path, "rb") as f:
                data = pickle.load(f, encoding="latin1")
            model = data.get("model", data)
            return {k: torch.as_tensor(v) for k, v in model.items()}
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated file, not a checkpoint at all, ...
        raise TeacherCheckpointError(f"cannot read teacher checkpoint {path!r}: {e}") from e
    if isinstance(data, Mapping) and "model" in data:
        data = data["model"]
    if not isinstance(data, Mapping):
        raise TeacherCheckpointError(f"teacher checkpoint {path!r} holds no state dict")
    if model is not None:  # a release (DINO, detrex Deformable DETR) is converted for the model
        from d2kd.convert import ConversionError, load_release_for_model

        try:
            converted = load_release_for_model(dict(data), model, path)
        except ConversionError as e:
            raise TeacherCheckpointError(f"teacher checkpoint {path!r}: {e}") from e
        if converted is not None:
            return converted
    return dict(data)


def _strip_prefix(state: Dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor]):
    """Accepts checkpoints saved from a wrapper (``module.``) or a distiller (``student.``)."""
    if set(state) & set(expected):
        return state
    for prefix in ("module.", "student."):
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if set(stripped) & set(expected):
            return stripped
    return state


class FrozenTeacher(nn.Module):
    """A detector loaded from a checkpoint and frozen for distillation.

    Args:
        model: the teacher detector, already built from its config (any d2kd DETR or
            detectron2 meta-architecture).
        weights: path of its checkpoint (``.pth``, detectron2 ``.pkl``, or a Hugging Face model
            folder with ``config.json``, converted on the fly by :mod:`d2kd.convert`). Required: an empty path is an error unless
            ``allow_uninitialized`` is set (tests and smoke runs only), because distilling from
            a randomly initialised teacher silently wastes a training run.
        allow_uninitialized: accept ``weights=""`` and keep the random initialisation.
        amp_dtype: ``"float16"`` or ``"bfloat16"`` to run the teacher under autocast on CUDA
            (ignored on CPU); ``None`` for full precision.
        flip_channels: the teacher was trained on the other channel order (RGB vs BGR) than the
            one the data loader gives the student: reverse the image channels before the teacher
            sees them (e.g. an MSRA-initialised BGR teacher with a torchvision-initialised RGB
            student).
    """

    def __init__(
        self,
        model: nn.Module,
        weights: str = "",
        *,
        allow_uninitialized: bool = False,
        amp_dtype: Optional[str] = None,
        flip_channels: bool = False,
    ):
        super().__init__()
        if amp_dtype is not None and amp_dtype not in _AMP_DTYPES:
            raise ValueError(f"teacher amp_dtype must be one of {sorted(_AMP_DTYPES)} or None")
        self.model = model
        self.weights = weights
        self.amp_dtype = amp_dtype
        self.flip_channels = flip_channels
        if weights:
            state = _strip_prefix(_read_state_dict(weights, model), model.state_dict())
            check_state_dict_fits(state, model, weights)
            model.load_state_dict(state, strict=True)
            logger.info("Loaded teacher weights from %s", weights)
        elif not allow_uninitialized:
            raise TeacherCheckpointError(
                "no teacher checkpoint given: set model.teacher.weights to a trained teacher's "
                "checkpoint (model.teacher.allow_uninitialized=True skips this for smoke tests)"
            )
        else:
            logger.warning("Teacher runs with random weights (allow_uninitialized=True)")
        for p in self.model.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True):
        """The teacher stays in eval mode whatever the caller asks."""
        return super().train(False)

    def prepare_inputs(self, batched_inputs):
        """The detectron2 inputs as the teacher expects them (channels reversed if
        ``flip_channels``; the dicts are shallow copies, the student's inputs are untouched)."""
        if not self.flip_channels:
            return batched_inputs
        return [dict(x, image=x["image"].flip(0)) for x in batched_inputs]

    def autocast(self):
        """Context manager: no_grad, plus autocast on CUDA when ``amp_dtype`` is set."""
        return _TeacherContext(self)

    def forward(self, *args, **kwargs):
        with self.autocast():
            return self.model(*args, **kwargs)


class TeacherHolder(nn.Module):
    """Base of modules that run a frozen teacher they do not own as a parameter holder.

    The teacher is kept *unregistered*: it is not in ``parameters()``, ``state_dict()``, the
    optimizer or DDP, yet it follows ``.to()``/``.cuda()``/``.float()`` and stays in eval mode
    when the holder is put in training mode. Subclasses call ``self.hold_teacher(teacher)``.
    """

    def hold_teacher(self, teacher: nn.Module) -> None:
        object.__setattr__(self, "_teacher", teacher)

    @property
    def teacher(self):
        return self._teacher

    def _apply(self, fn, *args, **kwargs):
        # .to()/.cuda()/.float() reach registered modules only; the teacher must follow too.
        super()._apply(fn, *args, **kwargs)
        self._teacher._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self._teacher.train(False)
        return self


class _TeacherContext:
    def __init__(self, teacher: FrozenTeacher):
        self.teacher = teacher
        self._stack = []

    def __enter__(self):
        ctxs = [torch.no_grad()]
        device = next(self.teacher.model.parameters(), torch.empty(0)).device
        if self.teacher.amp_dtype is not None and device.type == "cuda":
            ctxs.append(torch.autocast("cuda", dtype=_AMP_DTYPES[self.teacher.amp_dtype]))
        for c in ctxs:
            c.__enter__()
            self._stack.append(c)
        return self.teacher.model

    def __exit__(self, *exc):
        while self._stack:
            self._stack.pop().__exit__(*exc)
        return False
