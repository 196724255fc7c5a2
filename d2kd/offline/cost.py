"""Storage cost of offline distillation: a knowledge store vs dumping the teacher's features.

The comparison of UniKD's Tab. 4: bytes per image of each method's stored knowledge against
storing the teacher's full multi-scale features (all levels, float16), what a feature-mimicking
method such as FitNet would need offline. Feature maps grow with the image; the stored knowledge
of UniKD (N queries) and KD-DETR (a fixed number of points) does not.
"""
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ["feature_bytes", "cost_rows", "format_table", "COCO_TRAIN_IMAGES"]

COCO_TRAIN_IMAGES = 118287
COCO_SIZE = (800, 1333)


def _padded(h: int, w: int, divisibility: int) -> Tuple[int, int]:
    if divisibility > 1:
        h, w = (int(math.ceil(v / divisibility) * divisibility) for v in (h, w))
    return h, w


def feature_bytes(levels: Sequence[Mapping], height: int, width: int, divisibility: int = 32,
                  bytes_per_value: int = 2) -> int:
    """Bytes of one image's feature maps: per level ``{"stride", "channels"}``, each map
    ``ceil(H_pad / stride) x ceil(W_pad / stride)`` (H_pad, W_pad: the input padded to
    ``divisibility``), ``bytes_per_value`` per value (2: float16)."""
    h, w = _padded(height, width, divisibility)
    return sum(int(lv["channels"]) * math.ceil(h / lv["stride"]) * math.ceil(w / lv["stride"]) * bytes_per_value
               for lv in levels)


def cost_rows(store, sizes: Optional[Sequence[Tuple[str, int, int]]] = None) -> List[Dict]:
    """Rows of the storage table for an open :class:`~d2kd.offline.store.KnowledgeStore`.

    Each row: ``{"method", "mode", "bytes_per_view", "views", "dataset_bytes", "coco_bytes"}``;
    ``views`` is the number of views stored per image (the dump's K), the data-set and COCO
    totals are per image-view x images x K. ``sizes``: ``(label, H, W)`` network inputs the
    full-feature rows are computed for (default: the input size the dump saw first, and COCO's
    800 x 1333).
    """
    dump = store.header.get("dump", {})
    levels = dump.get("teacher_features") or []
    divisibility = int(dump.get("size_divisibility", 32) or 1)
    plan = store.plan
    k, n = plan["num_views"], plan["num_images"]
    if sizes is None:
        sizes = []
        if dump.get("input_size"):
            h, w = dump["input_size"]
            sizes.append((f"{h}x{w} px", h, w))
        sizes.append(("800x1333 px", *COCO_SIZE))
    rows = []
    per_view = store.bytes_per_item()
    records = per_view.pop("records", 0.0)
    teacher = store.identity["teacher"].get("class", "teacher").rsplit(".", 1)[-1]
    for method, nbytes in per_view.items():
        cls = store.identity["methods"][method]["class"].rsplit(".", 1)[-1]
        rows.append({"method": f"{cls} ({method}, store)", "mode": "offline", "bytes_per_view": nbytes,
                     "views": k, "dataset_bytes": nbytes * n * k, "coco_bytes": nbytes * COCO_TRAIN_IMAGES * k})
    rows.append({"method": "(image/view records)", "mode": "offline", "bytes_per_view": records, "views": k,
                 "dataset_bytes": records * n * k, "coco_bytes": records * COCO_TRAIN_IMAGES * k})
    if len(per_view) > 1:
        total = sum(per_view.values()) + records
        rows.append({"method": "store total", "mode": "offline", "bytes_per_view": total, "views": k,
                     "dataset_bytes": total * n * k, "coco_bytes": total * COCO_TRAIN_IMAGES * k})
    for label, h, w in sizes:
        if not levels:
            break
        nbytes = feature_bytes(levels, h, w, divisibility)
        rows.append({"method": f"FitNet (full {teacher} features, fp16, {label})", "mode": "offline",
                     "bytes_per_view": nbytes, "views": k, "dataset_bytes": nbytes * n * k,
                     "coco_bytes": nbytes * COCO_TRAIN_IMAGES * k})
    return rows


def _human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(nbytes) < 1000 or unit == "TB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{nbytes:.0f} B"
        nbytes /= 1000.0
    return f"{nbytes:.1f} TB"


def format_table(rows: Sequence[Mapping], num_images: int) -> str:
    """The rows as a text table (decimal units), with how many times smaller each store row is than
    each full-feature row (the ratios of UniKD's Tab. 4)."""
    feats = [r for r in rows if r["method"].startswith("FitNet")]
    head = ["method", "mode", "bytes / image-view", "views", f"data set ({num_images} images)",
            f"COCO train ({COCO_TRAIN_IMAGES} images)"]
    head += [f"x smaller than {r['method'].split(', ')[-1].rstrip(')')} feat." for r in feats]
    lines = [head]
    for r in rows:
        line = [r["method"], r["mode"], f"{r['bytes_per_view']:,.0f} ({_human(r['bytes_per_view'])})",
                str(r["views"]), _human(r["dataset_bytes"]), _human(r["coco_bytes"])]
        for f in feats:
            own = r in feats or r["method"].startswith("(")
            line.append("-" if own or not r["bytes_per_view"] else f"{f['bytes_per_view'] / r['bytes_per_view']:.1f}x")
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for j, line in enumerate(lines):
        out.append(" | ".join(c.ljust(wd) for c, wd in zip(line, widths)).rstrip())
        if j == 0:
            out.append("-+-".join("-" * wd for wd in widths))
    return "\n".join(out)
