"""Crash-safe checkpointing and clear errors for checkpoints that cannot be used.

Detectron2's checkpointer writes ``model_XXXXXXX.pth`` and then ``last_checkpoint`` in place, so a
job killed during the write (Slurm preemption, out-of-memory kill, Ctrl-C) can leave a truncated
checkpoint that ``last_checkpoint`` already names, and ``--resume`` then dies with an unpickling
error deep inside ``torch.load``. :class:`AtomicCheckpointer` writes every file to a temporary
name in the same directory and ``os.replace``-s it into place (atomic on POSIX file systems), so
readers only ever see the previous complete file or the new complete file.
"""
import hashlib
import logging
import os
import re
import tempfile
import zipfile
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import urlparse

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import hooks

from .errors import D2KDUserError

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
_TMP_PREFIX = ".tmp-"
# Where detectron2's model zoo serves the ImageNet-pretrained backbones (for the error message).
_MODEL_ZOO_URL = "https://dl.fbaipublicfiles.com/detectron2/"


class CheckpointError(D2KDUserError):
    """A checkpoint is missing, truncated, unreadable, or named by a broken ``last_checkpoint``."""


def sha256_file(path: str) -> str:
    """The sha256 hex digest of a file, read in 4 MB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Calls ``write(f)`` on a temporary file next to ``path``, then renames it to ``path``.

    Whatever happens inside ``write`` (an exception, KeyboardInterrupt, SystemExit from a signal
    handler), ``path`` keeps its previous content; the temporary file is removed. A SIGKILL can
    leave a ``.tmp-*`` file behind, never a partial ``path``.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX + os.path.basename(path) + ".", dir=directory)
    try:
        # mkstemp creates the file 0600; a file written in place would get 0666 minus the umask
        # (so that a shared group can read checkpoints): give the temporary file that mode.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # Make the rename itself durable (a crash right after it must not resurrect the old file).
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - some file systems refuse to open directories
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dir_fd)


def _umask() -> int:
    """The process's umask, read without changing it (Linux), else by setting it back at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:  # pragma: no cover - not Linux
        pass
    mask = os.umask(0o022)  # pragma: no cover
    os.umask(mask)  # pragma: no cover
    return mask  # pragma: no cover


def remove_partial_files(directory: str) -> List[str]:
    """Deletes the ``.tmp-*`` files :func:`_atomic_write` leaves in ``directory`` when its process
    is killed mid-write (SIGKILL); returns their paths. Call it before a run writes there."""
    removed = []
    if not os.path.isdir(directory):
        return removed
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.startswith(_TMP_PREFIX) and os.path.isfile(path):
            os.unlink(path)
            removed.append(path)
    if removed:
        logger.info("Removed %d partial file(s) of a killed run: %s", len(removed),
                    ", ".join(os.path.basename(p) for p in removed))
    return removed


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)``, all or nothing (see :func:`_atomic_write`)."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path``, all or nothing."""
    _atomic_write(path, lambda f: f.write(text), mode="w")


def is_remote(path: str) -> bool:
    """Whether ``path`` is a URL (``detectron2://``, ``https://``, ...) rather than a local file."""
    scheme = urlparse(path).scheme
    return len(scheme) > 1  # a single letter is a Windows drive


def missing_weights_hint(path: str) -> str:
    """How to obtain the file ``path`` names: for model-zoo backbones, the URL to fetch it from."""
    marker = "ImageNetPretrained/"
    if marker + "torchvision/" in path:
        name = os.path.splitext(os.path.basename(path))[0]  # e.g. R-18
        return (
            f"convert torchvision's ImageNet {name} weights with detectron2's "
            "tools/convert-torchvision-to-d2.py and save the result at that path (or set "
            "D2KD_WEIGHTS to the folder that holds ImageNetPretrained/); d2kd does not download "
            "anything at run time"
        )
    if marker in path:
        rel = path[path.index(marker):]
        return (
            f"download {_MODEL_ZOO_URL}{rel} to that path (or set D2KD_WEIGHTS to the folder "
            f"that holds {rel}); d2kd does not download anything at run time"
        )
    return "point train.init_checkpoint at an existing file, or set it to '' to train from scratch"


def check_checkpoint_file(path: str, what: str = "checkpoint") -> None:
    """Raises :class:`CheckpointError` unless ``path`` is an existing, complete local checkpoint.

    Cheap: ``.pth`` files written by ``torch.save`` are zip archives whose directory sits at the
    end of the file, so opening it detects truncation without reading the tensors.
    """
    if is_remote(path):
        raise CheckpointError(
            f"{what} {path!r} is a URL: d2kd does not download weights at run time; "
            f"{missing_weights_hint(path) if 'ImageNetPretrained/' in path else 'download it'} "
            "and set the path to the local file"
        )
    from .backbone_pretrain import is_builtin_backbone, verify_weights  # imports this module

    if is_builtin_backbone(path):
        from ..data import DEFAULT_SPEC

        verify_weights(path, shapes=DEFAULT_SPEC)  # exists, sha256, versions, depth, data spec
        return
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} not found: {path!r}; {missing_weights_hint(path)}")
    if path.endswith(".pth"):
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic.startswith(b"PK"):
            try:
                with zipfile.ZipFile(path) as z:
                    z.infolist()
            except (zipfile.BadZipFile, OSError) as e:
                raise CheckpointError(
                    f"{what} {path!r} is corrupt or truncated ({e}); it was probably written "
                    "by a job that was killed mid-write: delete it, and point last_checkpoint "
                    "at an earlier checkpoint (or train.init_checkpoint at another file)"
                ) from e
        elif os.path.getsize(path) == 0:
            raise CheckpointError(f"{what} {path!r} is empty")


class AtomicCheckpointer(DetectionCheckpointer):
    """:class:`~detectron2.checkpoint.DetectionCheckpointer` with atomic writes and clear errors.

    - ``save`` writes ``<name>.pth`` atomically, then tags ``last_checkpoint`` atomically;
    - ``load``/``resume_or_load`` raise :class:`CheckpointError` naming the file when it is
      missing, truncated or unreadable, or when ``last_checkpoint`` names a missing file.
    """

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to {}".format(save_file))
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(os.path.join(self.save_dir, LAST_CHECKPOINT), last_filename_basename)

    def get_checkpoint_file(self) -> str:
        tag = os.path.join(self.save_dir, LAST_CHECKPOINT)
        path = super().get_checkpoint_file()
        name = os.path.basename(path)
        if not name or not os.path.isfile(path):
            raise CheckpointError(
                f"{tag} names {name!r}, but {path!r} does not exist: write the name of an "
                f"existing checkpoint of {self.save_dir!r} into it, or delete it to start over"
            )
        return path

    def load(self, path: str, *args, **kwargs):
        if path and not is_remote(path):
            check_checkpoint_file(path)
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename: str):
        try:
            return super()._load_file(filename)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(
                f"cannot read checkpoint {filename!r}: {type(e).__name__}: {e}"
            ) from e


def last_checkpoint_path(output_dir: str) -> Optional[str]:
    """The checkpoint ``<output_dir>/last_checkpoint`` names, or None when there is no tag."""
    tag = os.path.join(output_dir, LAST_CHECKPOINT)
    if not os.path.isfile(tag):
        return None
    with open(tag) as f:
        name = f.read().strip()
    return os.path.join(output_dir, name)


def check_resume_checkpoint(output_dir: str) -> Optional[str]:
    """For ``--resume``: the checkpoint to resume from (None: none yet), checked to be usable."""
    path = last_checkpoint_path(output_dir)
    if path is None:
        return None
    tag = os.path.join(output_dir, LAST_CHECKPOINT)
    if os.path.basename(path) == "" or not os.path.isfile(path):
        raise CheckpointError(
            f"{tag} names {os.path.basename(path)!r}, but {path!r} does not exist: write the "
            "name of an existing checkpoint into it, or delete it to start over"
        )
    check_checkpoint_file(path, what=f"checkpoint named by {tag}")
    return path


_NUMBERED = re.compile(r"^(?P<prefix>.+)_(?P<iter>\d{7})\.pth$")


class PeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """detectron2's periodic checkpointing hook, with ``max_to_keep`` applied across resumes.

    detectron2 remembers the checkpoints it may delete in memory only, so every resume started
    the count again and old checkpoints were never deleted. Here the numbered checkpoints already
    in the output directory (``<prefix>_<7-digit iteration>.pth``, up to the start iteration)
    count as the oldest ones.
    """

    def before_train(self):
        super().before_train()
        if self.max_to_keep is None:
            return
        directory = self.checkpointer.save_dir
        start = self.trainer.start_iter
        found = []
        for name in os.listdir(directory) if os.path.isdir(directory) else ():
            m = _NUMBERED.match(name)
            if m and m.group("prefix") == self.file_prefix and int(m.group("iter")) < start:
                found.append((int(m.group("iter")), os.path.join(directory, name)))
        self.recent_checkpoints = [p for _, p in sorted(found)] + [
            p for p in self.recent_checkpoints if p not in dict(found).values()]
        while len(self.recent_checkpoints) > self.max_to_keep:
            path = self.recent_checkpoints.pop(0)
            if os.path.isfile(path):
                os.unlink(path)
                logger.info("Deleted %s (train.checkpointer.max_to_keep=%d)", path,
                            self.max_to_keep)
