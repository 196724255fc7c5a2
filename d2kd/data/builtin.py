"""Registration of the built-in "shapes" data sets, generated once in COCO format on first use.

``import d2kd.data`` registers (idempotently, without generating anything):

==========================  ==========================================  ======================
name                        files under ``$DETECTRON2_DATASETS``        spec
==========================  ==========================================  ======================
d2kd_shapes_train / _val    ``d2kd_shapes_192/{train,val}/*.png``       :data:`DEFAULT_SPEC`
d2kd_shapes_tiny_train/_val ``d2kd_shapes_tiny_128/{train,val}/*.png``  :data:`TINY_SPEC`
==========================  ==========================================  ======================

with ``annotations/instances_{train,val}.json`` and ``manifest.json`` (generator version and
spec) beside the image folders. The first ``DatasetCatalog.get`` of either split generates the
whole data set: into a temporary folder next to it, renamed into place when complete (a crash
never leaves a half-written data set under the final name), under an exclusive file lock (DDP
ranks or parallel jobs asking at once generate it once; the others wait and reuse it). A data set
whose manifest names another spec or generator version is regenerated (with a warning); a folder
without a manifest is never touched (an error says what to do).

``$DETECTRON2_DATASETS`` (default ``./datasets``) is read when a data set is loaded, so it may be
set after ``import d2kd.data``; the metadata (``json_file``, ``image_root``) follows it.
"""
import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from functools import partial
from typing import Dict, Iterator, List, Optional, Tuple

from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from .shapes import CLASSES, GENERATOR_VERSION, ShapesSpec, make_image

__all__ = [
    "DEFAULT_SPEC",
    "TINY_SPEC",
    "datasets_root",
    "shapes_dir",
    "ensure_shapes",
    "register_shapes",
    "register_all_shapes",
    "load_shapes",
]

logger = logging.getLogger(__name__)

DEFAULT_SPEC = ShapesSpec()
TINY_SPEC = ShapesSpec(num_train=64, num_val=32, image_size=128)
SPLITS = ("train", "val")
MANIFEST = "manifest.json"
_PNG_LEVEL = 1  # zlib level: noisy images barely compress better at 6, and 1 is faster


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS`` (default ``datasets``), read now (detectron2's convention)."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def shapes_dir(prefix: str, spec: ShapesSpec, root: Optional[str] = None) -> str:
    """The folder of the data set ``prefix`` with ``spec``: ``<root>/<prefix>_<image_size>``."""
    return os.path.join(root if root is not None else datasets_root(),
                        f"{prefix}_{spec.image_size}")


def _paths(directory: str, split: str) -> Tuple[str, str]:
    """(json_file, image_root) of ``split``."""
    return (os.path.join(directory, "annotations", f"instances_{split}.json"),
            os.path.join(directory, split))


def _manifest(spec: ShapesSpec) -> Dict:
    return {"generator": "d2kd.data.shapes", "version": GENERATOR_VERSION,
            "spec": spec.to_dict(), "classes": list(CLASSES)}


def _read_manifest(directory: str) -> Optional[Dict]:
    """The manifest of ``directory``; None if there is none; {} if it cannot be parsed."""
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_current(directory: str, spec: ShapesSpec) -> bool:
    manifest = _read_manifest(directory)
    return bool(manifest) and {k: manifest.get(k) for k in ("generator", "version", "spec",
                                                            "classes")} == _manifest(spec)


@contextlib.contextmanager
def _exclusive_lock(path: str) -> Iterator[None]:
    """An exclusive ``fcntl`` lock on ``path`` (no-op where fcntl does not exist)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("Waiting for %s (another process is generating the data set)", path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _render_to_file(task: Tuple[ShapesSpec, str, int, str]) -> List[Tuple[int, int, int, int, int]]:
    """Worker: renders one image, writes its PNG, returns its annotations."""
    spec, split, index, path = task
    pixels, layout = make_image(spec, split, index)
    Image.fromarray(pixels).save(path, format="PNG", compress_level=_PNG_LEVEL)
    return layout.annotations


def _coco_dict(spec: ShapesSpec, split: str, per_image) -> Dict:
    images, annotations = [], []
    for index, anns in enumerate(per_image):
        image_id = index + 1
        images.append({"id": image_id, "file_name": f"{index:06d}.png",
                       "width": spec.image_size, "height": spec.image_size})
        for label, x, y, w, h in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": label + 1, "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0})
    return {
        "info": {"description": f"d2kd shapes, {split} split (visible boxes)",
                 "version": str(GENERATOR_VERSION), "spec": spec.to_dict()},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name, "supercategory": "shape"}
                       for k, name in enumerate(CLASSES)],
    }


def _default_workers(num_images: int) -> int:
    if num_images < 200 or multiprocessing.current_process().daemon:
        return 1  # forking costs more than it saves; daemonic processes may not fork
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


def _generate(directory: str, spec: ShapesSpec, num_workers: Optional[int]) -> None:
    """Writes the whole data set (images, annotations, manifest last) into ``directory``."""
    total = spec.num_train + spec.num_val
    workers = _default_workers(total) if num_workers is None else max(1, num_workers)
    os.makedirs(os.path.join(directory, "annotations"))
    pool = None
    if workers > 1:
        methods = multiprocessing.get_all_start_methods()
        # fork: workers need no re-import (numpy and PIL only, no torch threads used in them)
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        pool = ctx.Pool(workers)
    try:
        for split in SPLITS:
            json_file, image_root = _paths(directory, split)
            os.makedirs(image_root)
            tasks = [(spec, split, i, os.path.join(image_root, f"{i:06d}.png"))
                     for i in range(spec.num_images(split))]
            if pool is not None:
                per_image = list(pool.imap(_render_to_file, tasks, chunksize=16))
            else:
                per_image = [_render_to_file(t) for t in tasks]
            with open(json_file, "w", encoding="utf-8") as f:
                json.dump(_coco_dict(spec, split, per_image), f, separators=(",", ":"))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    with open(os.path.join(directory, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(_manifest(spec), f, indent=1, sort_keys=True)


def ensure_shapes(prefix: str, spec: ShapesSpec, root: Optional[str] = None,
                  num_workers: Optional[int] = None) -> str:
    """Generates the data set ``prefix`` with ``spec`` unless it exists; returns its folder.

    Safe with several processes at once (file lock) and atomic (temporary folder, then rename).
    ``num_workers``: processes that render images (default: 2 if there are 2 cores, 1 for small
    data sets or inside daemonic processes such as data-loader workers).
    """
    directory = shapes_dir(prefix, spec, root)
    if _is_current(directory, spec):
        return directory
    parent, name = os.path.split(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    with _exclusive_lock(os.path.join(parent, f".{name}.lock")):
        if _is_current(directory, spec):  # generated by another process while we waited
            return directory
        stale = os.path.isdir(directory)
        if stale:
            manifest = _read_manifest(directory)
            if manifest is None:
                raise _dataset_error(
                    f"{directory} exists but has no {MANIFEST}, so it was not generated by d2kd "
                    f"(or by a version that wrote none); move it away or delete it, and the "
                    f"data set {prefix!r} will be generated there")
            logger.warning("Regenerating %s: it was generated with %s, the spec is now %s "
                           "(generator version %s)", directory, manifest.get("spec"),
                           spec.to_dict(), GENERATOR_VERSION)
        # Only the lock holder generates, so temporary folders left here were left by a crash.
        for entry in os.listdir(parent):
            if entry.startswith(f".{name}.tmp-") or entry.startswith(f".{name}.old-"):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
        tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
        old = os.path.join(parent, f".{name}.old-{os.getpid()}")
        start = time.perf_counter()
        logger.info("Generating %s (%d train + %d val images of %d px) ...", directory,
                    spec.num_train, spec.num_val, spec.image_size)
        try:
            _generate(tmp, spec, num_workers)
            if stale:
                os.rename(directory, old)
            os.rename(tmp, directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        logger.info("Generated %s in %.1f s", directory, time.perf_counter() - start)
    return directory


def _dataset_error(message: str) -> Exception:
    from d2kd.engine.errors import DatasetError  # lazy: keeps `import d2kd.data` light

    return DatasetError(message)


def _set_metadata(name: str, prefix: str, spec: ShapesSpec, root: Optional[str]) -> None:
    """(Re)writes the metadata of ``name``; paths follow the current ``$DETECTRON2_DATASETS``."""
    split = name[len(prefix) + 1:]
    json_file, image_root = _paths(shapes_dir(prefix, spec, root), split)
    meta = MetadataCatalog.get(name)
    if meta.get("json_file", json_file) != json_file or \
            meta.get("image_root", image_root) != image_root:
        MetadataCatalog.remove(name)  # the root moved: metadata refuses changed values
        meta = MetadataCatalog.get(name)
    meta.set(
        thing_classes=list(CLASSES),
        thing_dataset_id_to_contiguous_id={k + 1: k for k in range(len(CLASSES))},
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
        shapes_spec=spec,
    )


def load_shapes(prefix: str, spec: ShapesSpec, split: str,
                root: Optional[str] = None) -> List[Dict]:
    """Detectron2 dicts of ``<prefix>_<split>`` (generated first if needed).

    Raises ``DatasetError`` naming the file when the annotations cannot be parsed or images they
    list are missing.
    """
    from detectron2.data.datasets import load_coco_json

    name = f"{prefix}_{split}"
    directory = ensure_shapes(prefix, spec, root)
    _set_metadata(name, prefix, spec, root)
    json_file, image_root = _paths(directory, split)
    hint = f"delete {directory} and it will be regenerated on next use"
    try:
        dicts = load_coco_json(json_file, image_root, name)
    except FileNotFoundError as e:
        raise _dataset_error(f"{json_file} is missing ({e}); {hint}") from e
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise _dataset_error(f"{json_file} is corrupt ({type(e).__name__}: {e}); {hint}") from e
    present = set(os.listdir(image_root)) if os.path.isdir(image_root) else set()
    missing = [d["file_name"] for d in dicts if os.path.basename(d["file_name"]) not in present]
    if missing:
        raise _dataset_error(
            f"{len(missing)} image(s) listed in {json_file} are missing, e.g. {missing[0]}; {hint}")
    return dicts


def register_shapes(prefix: str, spec: ShapesSpec,
                    root: Optional[str] = None) -> Tuple[str, str]:
    """Registers ``<prefix>_train`` and ``<prefix>_val`` (idempotent); returns the two names.

    Nothing is generated until a split is first loaded with ``DatasetCatalog.get``. ``root``
    defaults to ``$DETECTRON2_DATASETS`` as it is when the data set is loaded. Registering a name
    again with another spec raises ``ValueError``.
    """
    if not isinstance(spec, ShapesSpec):
        raise TypeError(f"spec must be a ShapesSpec, got {type(spec).__name__}")
    names = tuple(f"{prefix}_{split}" for split in SPLITS)
    for name, split in zip(names, SPLITS):
        if name in DatasetCatalog.list():
            registered = MetadataCatalog.get(name).get("shapes_spec", None)
            if registered != spec:
                raise ValueError(
                    f"data set {name!r} is already registered"
                    + (f" with another spec ({registered})" if registered is not None else
                       " (not as a d2kd shapes data set)"))
            continue
        DatasetCatalog.register(name, partial(load_shapes, prefix, spec, split, root))
        _set_metadata(name, prefix, spec, root)
    return names


def register_all_shapes() -> None:
    """Registers the built-in variants: ``d2kd_shapes_*`` and ``d2kd_shapes_tiny_*``."""
    register_shapes("d2kd_shapes", DEFAULT_SPEC)
    register_shapes("d2kd_shapes_tiny", TINY_SPEC)

