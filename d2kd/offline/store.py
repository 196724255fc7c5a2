"""The knowledge store on disk: sharded, memory-mappable, checksummed, written atomically.

Layout of a store directory::

    store.json        what was dumped: identity (teacher, data set, methods, views), the plan
                      (images x views, shard size), the storage dtype of floating tensors and the
                      schema (method -> key -> dtype, source dtype, shape); written when the dump
                      starts, rewritten once when the first shard fixes the schema
    index.json        the finished shards: item count, size and sha256 of every file;
                      replaced atomically after each shard (a shard not listed here does not exist)
    shards/000042/    one shard = ``shard_size`` consecutive items of the plan:
        records.npy                 [n, 2] int64: (image key, view) of each item, in plan order
        <method>.<key>.npy          the item tensors concatenated along dim 0, [rows, *shape]
        <method>.<key>.offsets.npy  [n + 1] int64: item i is rows offsets[i]:offsets[i + 1]

Every ``.npy`` opens with ``np.load(mmap_mode="r")``; an item is a slice of each array, read
without loading the shard. Tensors keep their shape: dim 0 may differ between items (e.g. one
row per ground-truth box); the other dims and the dtype are fixed per key by the schema. Floating
tensors are stored as ``float_dtype`` (float16 by default; a finite value that overflows it is an
error, not an ``inf``) and read back in their original dtype; integer and bool tensors are kept
exactly. An "image key" is the data set's ``image_id`` when it is an integer, else a stable
63-bit hash of it (:func:`image_key`).

Concurrency: a writer holds an exclusive lock on ``.dump.lock`` in the store directory for its
lifetime (``fcntl.flock``, released by the kernel if the process dies); a second dump of the
same store fails at once instead of interleaving its files with the first's.

Crash safety: a shard is written into ``shards/.tmp-*`` and renamed into place, then ``index.json``
is replaced; a killed dump leaves at most a temporary folder or an unlisted shard folder, both
removed on ``resume``, and every listed shard is re-checked (sha256) before being kept.
Readers check sizes when the store is opened and each shard's checksums the first time a process
reads it (``verify="lazy"``), or all of them up front (``"eager"``), or sizes only (``"size"``).
Every failure is a :class:`KnowledgeStoreError` naming the file and what is wrong.
"""
import collections
import hashlib
import json
import logging
import math
import os
import re
import shutil
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from d2kd.engine.checkpoint import atomic_write_text
from d2kd.engine.errors import D2KDUserError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "KnowledgeStoreError",
    "StoreMissingError",
    "StoreCorruptError",
    "StoreMismatchError",
    "KnowledgeStore",
    "StoreWriter",
    "image_key",
    "encode_item",
    "decode_item",
]

logger = logging.getLogger(__name__)

FORMAT = "d2kd-knowledge-store"
FORMAT_VERSION = 1
HEADER = "store.json"
INDEX = "index.json"
LOCK = ".dump.lock"
SHARDS = "shards"
RECORDS = "records.npy"
_TMP = ".tmp-"
_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")
FLOAT_DTYPES = ("float16", "float32")
VERIFY_MODES = ("lazy", "eager", "size")
_OPEN_SHARDS = 8  # memory maps hold a file descriptor each: keep a few shards open per process


class KnowledgeStoreError(D2KDUserError):
    """A knowledge store cannot be used; the message names the file and what is wrong."""


class StoreMissingError(KnowledgeStoreError):
    """The store, a shard or a file of a shard does not exist (or has the wrong size)."""


class StoreCorruptError(KnowledgeStoreError):
    """A file's content does not match its checksum, or it cannot be parsed."""


class StoreMismatchError(KnowledgeStoreError):
    """The store was dumped with another teacher, data set, method config or view set."""


def shard_name(index: int) -> str:
    return f"{index:06d}"


def image_key(image_id) -> int:
    """The int64 a record stores for ``image_id``: the id itself when it is an integer (COCO,
    the built-in data), else the first 63 bits of the blake2b hash of ``str(image_id)``.

    A string is always hashed, digits or not: ``"0012"``, ``"12"`` and ``12`` are three images.
    (Two ids of one data set that still share a key are refused by the dump and the reader.)
    """
    if isinstance(image_id, (int, np.integer)) and not isinstance(image_id, bool):
        return int(image_id)
    digest = hashlib.blake2b(str(image_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def shard_path(root: str, shard: int, name: str = "") -> str:
    return os.path.join(root, SHARDS, shard_name(shard), name)


def check_shard_files(root: str, index: dict, shard: int, checksums: bool) -> None:
    """Raises unless every file of ``shard`` exists with its indexed size (and sha256)."""
    entry = index["shards"].get(str(shard))
    if entry is None:
        raise StoreMissingError(f"{shard_path(root, shard)} is not in {os.path.join(root, INDEX)}")
    for name, info in entry["files"].items():
        path = shard_path(root, shard, name)
        try:
            size = os.path.getsize(path)
        except OSError:
            raise StoreMissingError(
                f"{path} is missing (shard {shard} of the knowledge store {root}); rewrite it "
                "with python -m d2kd.tools.dump_knowledge ... --resume") from None
        if size != info["bytes"]:
            raise StoreCorruptError(f"{path} has {size} bytes, the index says {info['bytes']}: "
                                    "the file is truncated or was replaced; rewrite it with "
                                    "dump_knowledge --resume")
        if checksums:
            digest = file_sha256(path)
            if digest != info["sha256"]:
                raise StoreCorruptError(
                    f"{path} is corrupt: sha256 {digest[:16]}..., the index says "
                    f"{info['sha256'][:16]}...; rewrite it with dump_knowledge --resume")


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise StoreCorruptError(f"{path}: cannot read the {what} ({e})") from e
    if not isinstance(data, dict):
        raise StoreCorruptError(f"{path}: the {what} is not a JSON object")
    return data


def read_header(root: str) -> dict:
    """``store.json`` of the store ``root`` (FileNotFoundError when there is none)."""
    return _read_json(os.path.join(root, HEADER), "store header")


def _write_json(path: str, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------
# Encoding of one item's tensors


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise KnowledgeStoreError(
            f"{what} {name!r} cannot name a store file: use letters, digits, '_' and '-' only")


def encode_item(item: Mapping[str, Mapping[str, torch.Tensor]], float_dtype: str = "float16"
                ) -> Dict[str, Dict[str, Tuple[np.ndarray, str]]]:
    """One item's ``{method: {key: tensor}}`` as stored: ``{method: {key: (array, source dtype)}}``.

    Floating tensors become ``float_dtype`` (a finite value that overflows it raises
    :class:`KnowledgeStoreError`), integer and bool tensors keep their dtype.
    """
    if float_dtype not in FLOAT_DTYPES:
        raise ValueError(f"float_dtype must be one of {FLOAT_DTYPES}, got {float_dtype!r}")
    out: Dict[str, Dict[str, Tuple[np.ndarray, str]]] = {}
    for method, tensors in item.items():
        _check_name(method, "method name")
        if not isinstance(tensors, Mapping) or not tensors:
            raise KnowledgeStoreError(
                f"{method}.export_knowledge must give each image a non-empty dict of tensors, got "
                f"{type(tensors).__name__}")
        out[method] = {}
        for key, t in tensors.items():
            _check_name(key, f"knowledge key of {method}")
            if not isinstance(t, torch.Tensor):
                raise KnowledgeStoreError(f"{method}.{key} is a {type(t).__name__}, not a tensor")
            t = t.detach().cpu()
            source = str(t.dtype).replace("torch.", "")
            if t.is_floating_point():
                with np.errstate(over="ignore"):  # overflow is detected just below
                    a = t.float().numpy().astype(float_dtype)
                finite = torch.isfinite(t)
                if not np.array_equal(np.isfinite(a), finite.numpy()):
                    worst = float(t[finite].abs().max())
                    raise KnowledgeStoreError(
                        f"{method}.{key} has values up to {worst:g}, beyond the range of "
                        f"{float_dtype}: dump with --float-dtype float32")
            elif t.dtype == torch.bool or not t.is_complex():
                a = t.numpy()
            else:
                raise KnowledgeStoreError(f"{method}.{key}: {t.dtype} tensors cannot be stored")
            out[method][key] = (np.asarray(a, order="C"), source)
    return out


def decode_item(arrays: Mapping[str, Mapping[str, np.ndarray]], schema: Mapping
                ) -> Dict[str, Dict[str, torch.Tensor]]:
    """Stored arrays back to tensors of their source dtype (copies: writable, no memory map)."""
    out = {}
    for method, keys in arrays.items():
        out[method] = {}
        for key, a in keys.items():
            source = getattr(torch, schema[method][key]["source_dtype"])
            out[method][key] = torch.from_numpy(np.array(a)).to(source)
    return out


def _schema_of(encoded: Dict[str, Dict[str, Tuple[np.ndarray, str]]]) -> Dict:
    schema = {}
    for method, keys in encoded.items():
        schema[method] = {}
        for key, (a, source) in keys.items():
            schema[method][key] = {"dtype": a.dtype.name, "source_dtype": source,
                                   "shape": list(a.shape[1:]), "scalar": a.ndim == 0}
    return schema


def _check_schema(schema: Mapping, encoded, where: str) -> None:
    if sorted(schema) != sorted(encoded):
        raise KnowledgeStoreError(
            f"{where}: methods {sorted(encoded)} differ from the store's schema {sorted(schema)}")
    for method, keys in encoded.items():
        if sorted(keys) != sorted(schema[method]):
            raise KnowledgeStoreError(
                f"{where}: {method} exported keys {sorted(keys)}, the schema has "
                f"{sorted(schema[method])} (every image must export the same keys)")
        for key, (a, source) in keys.items():
            spec = schema[method][key]
            shape = list(a.shape[1:]) if a.ndim else []
            if (a.dtype.name, source, shape, a.ndim == 0) != (
                    spec["dtype"], spec["source_dtype"], list(spec["shape"]), spec["scalar"]):
                raise KnowledgeStoreError(
                    f"{where}: {method}.{key} is {source} {tuple(a.shape)}, the schema says "
                    f"{spec['source_dtype']} [n, {', '.join(map(str, spec['shape']))}]"
                    f"{' (scalar)' if spec['scalar'] else ''}: only dim 0 may vary between images")


# ---------------------------------------------------------------------------------------------
# Writing


class StoreWriter:
    """Creates (or resumes) a store and writes its shards.

    Args:
        root: the store directory.
        header: ``store.json`` without its schema: ``{"identity": ..., "plan": {"num_items",
            "shard_size", ...}, "views": ..., "float_dtype": ...}`` plus free-form fields.
        resume: continue a store with the same identity and plan (valid shards are kept);
            without it an existing store is an error.
        compare_keys: header fields that must be equal to resume (default: identity, plan,
            float_dtype).
    """

    def __init__(self, root: str, header: dict, resume: bool = False,
                 compare_keys: Sequence[str] = ("identity", "plan", "float_dtype")):
        self.root = root
        self._lock = None
        os.makedirs(root, exist_ok=True)
        self._lock = _lock_store(root)
        try:
            self._open_store(header, resume, compare_keys)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Releases the store's lock (the writer cannot write afterwards)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        self.close()

    def _open_store(self, header: dict, resume: bool, compare_keys: Sequence[str]) -> None:
        root = self.root
        plan = header["plan"]
        plan["num_shards"] = max(1, math.ceil(plan["num_items"] / plan["shard_size"]))
        header = dict(header, format=FORMAT, version=FORMAT_VERSION)
        header.setdefault("schema", None)
        header_path = os.path.join(root, HEADER)
        if os.path.exists(header_path):
            if not resume:
                raise KnowledgeStoreError(
                    f"{root} already holds a knowledge store ({header_path}): pass --resume to "
                    "finish it, or choose another --output")
            old = _read_json(header_path, "store header")
            from .identity import describe_differences  # the one place diffs are worded

            for key in compare_keys:
                lines = describe_differences(old.get(key), header.get(key), key,
                                             ("the store", "this dump"))
                if lines:
                    raise StoreMismatchError(
                        f"cannot resume {header_path}: it was dumped with another {key}:\n  "
                        + "\n  ".join(lines)
                        + "\n(choose another --output, or delete the store to start over)")
            header["schema"] = old.get("schema")
            header["dump"] = {**old.get("dump", {}), **header.get("dump", {})}
        elif os.path.isdir(root) and [e for e in os.listdir(root) if not e.startswith(".")]:
            raise KnowledgeStoreError(
                f"{root} exists and is not a knowledge store (no {HEADER}): choose another --output")
        os.makedirs(os.path.join(root, SHARDS), exist_ok=True)
        self.header = header
        _write_json(header_path, header)
        self.index = self._clean(resume)

    @property
    def num_shards(self) -> int:
        return self.header["plan"]["num_shards"]

    def save_header(self) -> None:
        """Rewrites ``store.json`` (atomically) after a change of ``self.header``'s free fields."""
        _write_json(os.path.join(self.root, HEADER), self.header)

    def shard_items(self, shard: int) -> range:
        """Plan positions of the items of ``shard``."""
        size = self.header["plan"]["shard_size"]
        return range(shard * size, min((shard + 1) * size, self.header["plan"]["num_items"]))

    def _clean(self, resume: bool) -> dict:
        """Loads the index, drops what a crash left behind and shards that fail verification."""
        shards_dir = os.path.join(self.root, SHARDS)
        index_path = os.path.join(self.root, INDEX)
        index = {"shards": {}, "complete": False}
        if resume and os.path.exists(index_path):
            index = _read_json(index_path, "shard index")
            index.setdefault("shards", {})
        for name in list(index["shards"]):
            try:
                check_shard_files(self.root, index, int(name), checksums=True)
            except KnowledgeStoreError as e:
                logger.warning("Redoing shard %s: %s", name, e)
                del index["shards"][name]
        index["complete"] = False
        _write_json(index_path, index)
        listed = {shard_name(int(n)) for n in index["shards"]}
        for entry in os.listdir(shards_dir):
            if entry not in listed:  # temporary folders, shards written but never indexed
                shutil.rmtree(os.path.join(shards_dir, entry), ignore_errors=True)
        return index

    def pending_shards(self) -> List[int]:
        """Shards still to write, in order."""
        return [s for s in range(self.num_shards) if str(s) not in self.index["shards"]]

    def write_shard(self, shard: int, records: Sequence[Tuple[int, int]],
                    items: Sequence[Mapping[str, Mapping[str, torch.Tensor]]]) -> dict:
        """Writes shard ``shard``: ``records[i] = (image key, view)`` and ``items[i] =
        {method: {key: tensor}}`` of each of its items, in plan order. Returns its index entry."""
        if self._lock is None:
            raise KnowledgeStoreError(f"{self.root}: the writer was closed (its lock released)")
        expected = len(self.shard_items(shard))
        if len(records) != expected or len(items) != expected:
            raise ValueError(f"shard {shard} holds {expected} items, got {len(records)} records "
                             f"and {len(items)} items")
        float_dtype = self.header["float_dtype"]
        encoded = [encode_item(item, float_dtype) for item in items]
        where = f"{self.root} shard {shard}"
        if self.header["schema"] is None:
            self.header["schema"] = _schema_of(encoded[0])
            self.save_header()
        for i, enc in enumerate(encoded):
            _check_schema(self.header["schema"], enc, f"{where}, item {i} (image {records[i][0]})")

        shards_dir = os.path.join(self.root, SHARDS)
        final = os.path.join(shards_dir, shard_name(shard))
        tmp = os.path.join(shards_dir, f"{_TMP}{shard_name(shard)}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        files = {}
        try:
            files[RECORDS] = _save(tmp, RECORDS, np.asarray(records, dtype=np.int64).reshape(-1, 2))
            for method, keys in self.header["schema"].items():
                for key, spec in keys.items():
                    parts = [enc[method][key][0] for enc in encoded]
                    parts = [p.reshape(1) if spec["scalar"] else p for p in parts]
                    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
                    offsets[1:] = np.cumsum([p.shape[0] for p in parts])
                    data = (np.concatenate(parts, axis=0) if parts else
                            np.zeros([0] + list(spec["shape"]), dtype=spec["dtype"]))
                    files[f"{method}.{key}.npy"] = _save(tmp, f"{method}.{key}.npy", data)
                    files[f"{method}.{key}.offsets.npy"] = _save(tmp, f"{method}.{key}.offsets.npy",
                                                                 offsets)
            shutil.rmtree(final, ignore_errors=True)  # an unlisted leftover of a crash
            os.replace(tmp, final)
            _fsync_dir(shards_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        entry = {"items": expected, "files": files}
        self.index["shards"][str(shard)] = entry
        self.index["complete"] = not self.pending_shards()
        _write_json(os.path.join(self.root, INDEX), self.index)
        return entry


def _lock_store(root: str):
    """The open lock file of ``root``, exclusively locked; KnowledgeStoreError if another process
    (or another writer of this one) holds it."""
    f = open(os.path.join(root, LOCK), "a")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no protection
        return f
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise KnowledgeStoreError(
            f"{root} is being written by another dump (it holds {os.path.join(root, LOCK)}): wait for "
            "it to finish, or choose another --output") from None
    return f


def _save(directory: str, name: str, array: np.ndarray) -> dict:
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": os.path.getsize(path), "sha256": file_sha256(path)}


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - file systems that refuse to open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Reading


class KnowledgeStore:
    """Read access to a finished store.

    Args:
        root: the store directory.
        verify: ``"lazy"`` (default): sha256 of a shard's files the first time this process reads
            it; ``"eager"``: of every shard now (and no more in processes this object is
            pickled to, e.g. data-loader workers); ``"size"``: file sizes only.

    Opening checks that ``store.json`` and ``index.json`` exist and parse, that every planned
    shard is listed and that each of its files exists with its recorded size.
    """

    def __init__(self, root: str, verify: str = "lazy"):
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        self.root = root
        self.verify_mode = verify
        header_path = os.path.join(root, HEADER)
        try:
            self.header = _read_json(header_path, "store header")
        except FileNotFoundError:
            raise StoreMissingError(
                f"no knowledge store at {root!r} ({HEADER} not found): dump one with "
                f"python -m d2kd.tools.dump_knowledge --config-file <config> --output {root}"
            ) from None
        if self.header.get("format") != FORMAT or self.header.get("version") != FORMAT_VERSION:
            raise StoreMismatchError(
                f"{header_path}: format {self.header.get('format')!r} version "
                f"{self.header.get('version')!r}, this d2kd reads {FORMAT!r} version {FORMAT_VERSION}")
        index_path = os.path.join(root, INDEX)
        try:
            self.index = _read_json(index_path, "shard index")
        except FileNotFoundError:
            raise StoreMissingError(f"{index_path} not found: the dump of {root} never finished a "
                                    "shard; run dump_knowledge again with --resume") from None
        if self.schema is None:
            raise StoreMissingError(f"{header_path} has no schema: the dump never finished a shard")
        self._verified: set = set()
        self._open: "collections.OrderedDict[int, dict]" = collections.OrderedDict()
        self._lookup: Optional[Dict[Tuple[int, int], Tuple[int, int]]] = None
        self.check_complete()
        if verify == "eager":
            self.verify()

    # -- metadata ------------------------------------------------------------------------------
    @property
    def identity(self) -> dict:
        return self.header["identity"]

    @property
    def schema(self) -> Optional[dict]:
        return self.header.get("schema")

    @property
    def plan(self) -> dict:
        return self.header["plan"]

    @property
    def views(self) -> List[dict]:
        return self.header["identity"]["views"]["views"]

    @property
    def methods(self) -> List[str]:
        return sorted(self.schema)

    @property
    def uid(self) -> str:
        """Digest of what defines the content (identity, plan, storage dtype): two stores with
        the same uid hold interchangeable knowledge."""
        return content_uid(self.header)

    def shard_path(self, shard: int, name: str = "") -> str:
        return shard_path(self.root, shard, name)

    # -- checks -------------------------------------------------------------------------------
    def check_complete(self) -> None:
        """Every planned shard is listed and its files exist with their recorded sizes."""
        missing = [s for s in range(self.plan["num_shards"]) if str(s) not in self.index["shards"]]
        if missing:
            names = ", ".join(self.shard_path(s) for s in missing[:3])
            more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
            raise StoreMissingError(
                f"knowledge store {self.root} is incomplete: {len(missing)} of "
                f"{self.plan['num_shards']} shards were never written: {names}{more}; finish it with "
                "python -m d2kd.tools.dump_knowledge ... --resume")
        for s in range(self.plan["num_shards"]):
            self._check_shard_files(s, checksums=False)

    def _check_shard_files(self, shard: int, checksums: bool) -> None:
        check_shard_files(self.root, self.index, shard, checksums)

    def verify(self, shards: Optional[Iterable[int]] = None) -> None:
        """Checksums of the given shards (default: all) now; raises on the first bad file."""
        for s in range(self.plan["num_shards"]) if shards is None else shards:
            if s not in self._verified:
                self._check_shard_files(s, checksums=True)
                self._verified.add(s)

    # -- reading ------------------------------------------------------------------------------
    def _shard(self, shard: int) -> dict:
        arrays = self._open.get(shard)
        if arrays is not None:
            self._open.move_to_end(shard)
            return arrays
        if self.verify_mode == "lazy":
            self.verify([shard])
        elif self.verify_mode == "size":
            self._check_shard_files(shard, checksums=False)
        arrays = {}
        for name in self.index["shards"][str(shard)]["files"]:
            path = self.shard_path(shard, name)
            try:
                arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise StoreCorruptError(f"{path}: cannot read ({e})") from e
        self._open[shard] = arrays
        while len(self._open) > _OPEN_SHARDS:
            self._open.popitem(last=False)
        return arrays

    def records(self, shard: int) -> np.ndarray:
        """[n, 2] int64 (image key, view) of the items of ``shard``."""
        return self._shard(shard)[RECORDS]

    def _build_lookup(self) -> Dict[Tuple[int, int], Tuple[int, int]]:
        lookup = {}
        for s in range(self.plan["num_shards"]):
            path = self.shard_path(s, RECORDS)
            # Records only (small): reading them does not checksum the whole shard yet.
            recs = np.load(path, allow_pickle=False) if self.verify_mode != "eager" else self.records(s)
            for row, (key, view) in enumerate(np.asarray(recs).tolist()):
                if (key, view) in lookup:
                    first = lookup[(key, view)]
                    raise StoreCorruptError(
                        f"{self.root}: image key {key} view {view} is stored twice (shard {first[0]} row "
                        f"{first[1]} and shard {s} row {row}); a store must hold each image and view once: "
                        "dump it again")
                lookup[(key, view)] = (s, row)
        return lookup

    def locate(self, image_id, view: int) -> Tuple[int, int]:
        """(shard, row) of ``(image_id, view)``; :class:`StoreMismatchError` if not stored."""
        if self._lookup is None:
            self._lookup = self._build_lookup()
        key = image_key(image_id)
        where = self._lookup.get((key, int(view)))
        if where is None:
            raise StoreMismatchError(
                f"{self.root} has no knowledge for image {image_id!r} view {view} (its "
                f"{len(self._lookup)} items come from another data set or view set?)")
        return where

    def read(self, image_id, view: int) -> Dict[str, Dict[str, torch.Tensor]]:
        """``{method: {key: tensor}}`` of image ``image_id`` under view ``view``, in the dtypes
        the methods exported (floating tensors rounded through the storage dtype)."""
        shard, row = self.locate(image_id, view)
        arrays = self._shard(shard)
        rec = tuple(int(v) for v in arrays[RECORDS][row])
        if rec != (image_key(image_id), int(view)):
            raise StoreCorruptError(
                f"{self.shard_path(shard, RECORDS)} row {row} holds (image {rec[0]}, view {rec[1]}), "
                f"expected (image {image_key(image_id)}, view {view})")
        out = {}
        for method, keys in self.schema.items():
            out[method] = {}
            for key, spec in keys.items():
                off = arrays[f"{method}.{key}.offsets.npy"]
                a = arrays[f"{method}.{key}.npy"][int(off[row]):int(off[row + 1])]
                out[method][key] = a.reshape(()) if spec["scalar"] else a
        return decode_item(out, self.schema)

    def bytes_per_item(self) -> Dict[str, float]:
        """Mean bytes on disk per item (one image under one view) and method: data, offsets and
        their .npy headers; ``"records"``: the (image, view) records."""
        totals = collections.Counter()
        for entry in self.index["shards"].values():
            for name, info in entry["files"].items():
                totals["records" if name == RECORDS else name.split(".", 1)[0]] += info["bytes"]
        n = max(1, self.plan["num_items"])
        return {m: totals[m] / n for m in sorted(totals)}

    def total_bytes(self) -> int:
        return sum(info["bytes"] for e in self.index["shards"].values() for info in e["files"].values())

    def __getstate__(self):
        # Memory maps are per process: a data-loader worker reopens what it reads.
        state = dict(self.__dict__)
        state["_open"] = collections.OrderedDict()
        state["_lookup"] = None
        return state


def content_uid(header: Mapping) -> str:
    """sha256 over the identity, plan and storage dtype of a store header."""
    text = json.dumps({k: header.get(k) for k in ("identity", "plan", "float_dtype")},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
