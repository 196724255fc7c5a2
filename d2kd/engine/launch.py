"""Process-level set-up for CPU and GPU runs.

``--num-gpus N`` means N processes per machine. On a machine without a GPU detectron2's
``launch`` already starts them with the gloo backend; what is left for us: CPU threads per
process, DDP arguments that are valid on CPU, and turning off what only CUDA has (AMP, cudnn).
"""
import logging
import os
from typing import Any, Dict

import torch
from detectron2.utils import comm

logger = logging.getLogger(__name__)


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"`` (the default of ``train.device``)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def configure_threads(num_threads: int = 0) -> int:
    """Sets ``torch.set_num_threads``: explicit value, else ``$OMP_NUM_THREADS``, else cores
    divided by the processes of this machine (so N DDP processes on a CPU don't oversubscribe it).

    Returns the number of threads set.
    """
    if num_threads <= 0:
        env = os.environ.get("OMP_NUM_THREADS", "")
        if env.isdigit() and int(env) > 0:
            num_threads = int(env)
        else:
            num_threads = max(1, available_cores() // max(1, comm.get_local_size()))
    torch.set_num_threads(num_threads)
    return num_threads


def setup_process(cfg, eval_only: bool = False) -> torch.device:
    """Per-process set-up after ``default_setup``: threads, cudnn, CUDA device; returns the
    model's device."""
    device = torch.device(cfg.train.device)
    threads = configure_threads(int(cfg.train.get("num_threads", 0) or 0))
    if device.type == "cuda":
        if device.index is None and comm.get_world_size() > 1:
            device = torch.device("cuda", comm.get_local_rank())
        torch.cuda.set_device(device)
    else:
        torch.backends.cudnn.benchmark = False
    logger.info(
        "Device %s, %d process(es) on this machine, %d world size, %d CPU threads per process",
        device, comm.get_local_size(), comm.get_world_size(), threads,
    )
    return device


def use_amp(cfg, device: torch.device) -> bool:
    """Whether to train with AMP: ``train.amp.enabled`` and a CUDA device (logged otherwise)."""
    enabled = bool(cfg.train.get("amp", {}).get("enabled", False))
    if enabled and device.type != "cuda":
        logger.info("train.amp.enabled=True is ignored: AMP is only used on CUDA (device %s)",
                    device)
        return False
    return enabled


def ddp_kwargs(cfg, device: torch.device) -> Dict[str, Any]:
    """Keyword arguments of ``create_ddp_model`` from ``train.ddp``, made valid for ``device``."""
    kwargs = dict(cfg.train.get("ddp", {}) or {})
    if device.type != "cuda":
        kwargs["device_ids"] = None  # CPU modules take no device ids
        if kwargs.pop("fp16_compression", False):
            logger.info("train.ddp.fp16_compression is ignored on %s", device)
    return kwargs


def parameter_digest(model: torch.nn.Module) -> str:
    """SHA-1 of the model's parameters (names, shapes, bytes), for comparing replicas."""
    import hashlib

    h = hashlib.sha1()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_replicas_in_sync(model: torch.nn.Module) -> str:
    """Checks that every DDP process holds the same parameters; returns the digest.

    Called at the end of training: a mismatch means the processes trained different models
    (e.g. a parameter DDP never synchronised), which silently ruins a distributed run.
    Buffers (BN running statistics without ``broadcast_buffers``) may differ and are ignored.
    """
    digest = parameter_digest(model)
    digests = comm.all_gather(digest)
    logger.info("Parameter digest of rank %d: %s", comm.get_rank(), digest)
    if len(set(digests)) > 1:
        raise RuntimeError(f"DDP replicas diverged: parameter digests per rank {digests}")
    if len(digests) > 1:
        logger.info("Parameters are identical on all %d ranks", len(digests))
    return digest
