"""The "shapes" data set: a procedural detection problem that d2kd generates itself.

Twelve categories in six pairs that differ only in a subtle cue, so that capacity and resolution
matter (a small or low-resolution detector confuses the partners):

==================  ==================  =================================================
class               partner             cue
==================  ==================  =================================================
square              notched_square      a square notch (1/4 of the side) cut from a corner
disc                dotted_disc         a small dot (0.3 radius) of another colour at the centre
pentagon            hexagon             5 vs 6 corners
star5               star6               5 vs 6 points (same inner/outer radius ratio)
hstripes            vstripes            stripes along vs across the square (rotation <= 20 deg)
ring                broken_ring         a gap in the annulus (a Landolt C)
==================  ==================  =================================================

Colours never give the class away: every object draws its fill, optional outline and (for dots
and stripes) detail colour from the same distribution, and outlines make plain shapes two-coloured
too. Each object draws a COCO size range (small 25%, medium 45%, large 30%; at most two large
objects and about 1.5 images' worth of area per image, the rest small), then a nominal diameter
log-uniform inside it (``min_size`` to ``max_size_fraction * image_size``). Large objects are the
ones most often rejected by the occlusion rules below, so the boxes come out at about 51% small,
39% medium and 10% large with the default spec. Images have 0 to ``max_objects`` objects (about
5% none, mean about 8.5) on textured backgrounds (gradients, value noise, stripes, checkerboards,
speckle, blends of two), among 0 to ``max_distractors`` unlabelled distractors (triangles,
ellipses, bars, crosses, blobs, thin lines, and *partial* class shapes cut by a straight line),
then contrast jitter, blur and noise.

Occlusion and box convention
----------------------------
Items (objects and distractors) are pasted back to front. A new item is rejected (and placed
elsewhere, up to a few tries, else dropped) if it would leave a labelled object with less than
``min_visible`` of its pixels visible, or hide more than 5% of any of that object's *cue
discs* (small discs around each of its corners, tips, centre or along its ring: wherever its cue,
or its partner's, would be). The image border counts as an occluder in the same way, so truncated objects stay
identifiable. Boxes are the **visible (modal) extent**: the tight box of the pixels where the
object is on top (anti-aliased coverage >= 0.5), COCO ``[x, y, w, h]`` with pixel ``i`` covering
``[i, i + 1)``; ``area`` is the box area ``w * h`` (the COCO size ranges apply to it).

Determinism
-----------
Image ``i`` of ``split`` depends only on ``(spec, split, i)`` (never on ``num_train``/``num_val``),
through two independent random streams: the layout (geometry, positions, labels) and the paint
(colours, textures, blur, noise). :func:`layout_image` runs the layout alone, which is how the
statistics of a spec are computed without rendering.
"""
import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "CLASSES",
    "GENERATOR_VERSION",
    "ShapesSpec",
    "Layout",
    "layout_image",
    "render_image",
    "make_image",
    "size_bucket",
    "layout_statistics",
]

# Bump whenever the pixels or annotations produced for a given spec change: data sets generated
# by another version are regenerated (see d2kd.data.builtin).
GENERATOR_VERSION = 1

CLASSES: Tuple[str, ...] = (
    "square",
    "notched_square",
    "disc",
    "dotted_disc",
    "pentagon",
    "hexagon",
    "star5",
    "star6",
    "hstripes",
    "vstripes",
    "ring",
    "broken_ring",
)

# "pretrain": images that only backbone pretraining sees (d2kd.data.crops), disjoint from both.
_SPLIT_CODES = {"train": 0, "val": 1, "pretrain": 2}
_SUPERSAMPLE = 4  # anti-aliasing: masks are drawn at 4x and box-filtered down
_CUE_VISIBLE = 0.95  # fraction of each cue disc of a labelled object that must stay visible
_PLACEMENT_TRIES = 20


@dataclass(frozen=True)
class ShapesSpec:
    """Everything that determines a generated data set (with :data:`GENERATOR_VERSION`).

    Sizes are in pixels: an object's nominal diameter lies in
    ``[min_size, max_size_fraction * image_size]``. ``min_visible``: the least fraction of a
    labelled object's pixels left visible by occluders and the image border.
    """

    num_train: int = 2000
    num_val: int = 500
    image_size: int = 192
    seed: int = 0
    max_objects: int = 30
    empty_fraction: float = 0.05
    min_size: float = 10.0
    max_size_fraction: float = 0.7
    max_distractors: int = 10
    min_visible: float = 0.6

    def __post_init__(self):
        if self.num_train < 0 or self.num_val < 0:
            raise ValueError(f"negative split size in {self}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")
        if not 0 <= self.empty_fraction <= 1 or not 0 < self.min_visible <= 1:
            raise ValueError(f"fractions out of range in {self}")
        if self.max_objects < 0 or self.max_distractors < 0 or self.min_size < 4:
            raise ValueError(f"bad object counts or sizes in {self}")

    def num_images(self, split: str) -> int:
        """Number of images of ``split`` ("train" or "val")."""
        return {"train": self.num_train, "val": self.num_val}[split]

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)


def size_bucket(area: float) -> str:
    """COCO's size range of a box area: "small" (< 32^2), "medium" or "large" (> 96^2)."""
    return "small" if area < 32**2 else ("medium" if area <= 96**2 else "large")


def _rngs(spec: ShapesSpec, split: str, index: int) -> Tuple[np.random.Generator, ...]:
    """(layout, paint) generators of image ``index``: independent of the split sizes."""
    ss = np.random.SeedSequence(entropy=spec.seed, spawn_key=(_SPLIT_CODES[split], index))
    return tuple(np.random.Generator(np.random.PCG64(s)) for s in ss.spawn(2))


# ---------------------------------------------------------------------------------------------
# Geometry in the unit frame (nominal extent [-1, 1]); polygons are float arrays [N, 2] (x, y).


def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
    t = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], 1)


def _star(points: int, inner: float = 0.5) -> np.ndarray:
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    t = -math.pi / 2 + math.pi * np.arange(2 * points) / points
    return np.stack([radii * np.cos(t), radii * np.sin(t)], 1)


def _rect(x0, y0, x1, y1) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


_CIRCLE = _regular(64, phase=0.0)
_SQUARE = _rect(-1, -1, 1, 1)


@dataclass
class _Shape:
    """A drawable item in its unit frame.

    ``fill``: (polygon, keep) pairs drawn in order (keep=False erases: holes, notches, cuts);
    ``detail``: polygons painted in the detail colour (dots, stripes), clipped by the fill;
    ``cues``: (x, y, radius) discs that must stay visible; ``max_rotation`` in radians.
    """

    fill: List[Tuple[np.ndarray, bool]]
    detail: List[np.ndarray] = dataclasses.field(default_factory=list)
    cues: List[Tuple[float, float, float]] = dataclasses.field(default_factory=list)
    max_rotation: float = math.pi


def _stripes(vertical: bool, n: int) -> List[np.ndarray]:
    edges = np.linspace(-1, 1, 2 * n + 2)
    bands = [_rect(-1, edges[k], 1, edges[k + 1]) for k in range(1, 2 * n + 1, 2)]
    return [b[:, ::-1].copy() for b in bands] if vertical else bands


def _class_shape(label: int, rng: np.random.Generator) -> _Shape:
    name = CLASSES[label]
    corners = [(sx, sy, 0.55) for sx in (-1, 1) for sy in (-1, 1)]
    if name in ("square", "notched_square"):
        fill = [(_SQUARE, True)]
        if name == "notched_square":
            fill.append((_rect(0.5, 0.5, 1.1, 1.1), False))
        return _Shape(fill, cues=corners)
    if name in ("disc", "dotted_disc"):
        detail = [_CIRCLE * 0.3] if name == "dotted_disc" else []
        return _Shape([(_CIRCLE, True)], detail, cues=[(0.0, 0.0, 0.55)])
    if name in ("pentagon", "hexagon"):
        poly = _regular(5 if name == "pentagon" else 6)
        return _Shape([(poly, True)], cues=[(x, y, 0.35) for x, y in poly])
    if name in ("star5", "star6"):
        poly = _star(5 if name == "star5" else 6)
        return _Shape([(poly, True)], cues=[(x, y, 0.35) for x, y in poly[::2]])
    if name in ("hstripes", "vstripes"):
        detail = _stripes(name == "vstripes", int(rng.integers(2, 4)))
        return _Shape([(_SQUARE, True)], detail, cues=[(0.0, 0.0, 0.75)],
                      max_rotation=math.radians(20))
    if name in ("ring", "broken_ring"):
        fill = [(_CIRCLE, True), (_CIRCLE * 0.58, False)]
        gap = rng.uniform(0, 2 * math.pi)
        if name == "broken_ring":
            c, s = math.cos(gap), math.sin(gap)
            bar = _rect(0.0, -0.2, 1.3, 0.2) @ np.array([[c, s], [-s, c]])
            fill.append((bar, False))
        angles = [gap + k * math.pi / 4 for k in range(8)]
        return _Shape(fill, cues=[(0.8 * math.cos(a), 0.8 * math.sin(a), 0.35) for a in angles])
    raise AssertionError(name)


_DISTRACTORS = ("triangle", "ellipse", "bar", "cross", "blob", "partial", "line")


def _distractor_shape(rng: np.random.Generator) -> Tuple[_Shape, str]:
    kind = _DISTRACTORS[int(rng.integers(len(_DISTRACTORS)))]
    if kind == "triangle":
        t = -math.pi / 2 + 2 * math.pi * np.arange(3) / 3 + rng.uniform(-0.4, 0.4, 3)
        r = rng.uniform(0.7, 1.0, 3)
        return _Shape([(np.stack([r * np.cos(t), r * np.sin(t)], 1), True)]), kind
    if kind == "ellipse":
        return _Shape([(_CIRCLE * [1.0, 1.0 / rng.uniform(2.0, 4.0)], True)]), kind
    if kind == "bar":
        h = 1.0 / rng.uniform(2.5, 6.0)
        return _Shape([(_rect(-1, -h, 1, h), True)]), kind
    if kind == "cross":
        h = rng.uniform(0.15, 0.35)
        return _Shape([(_rect(-1, -h, 1, h), True), (_rect(-h, -1, h, 1), True)]), kind
    if kind == "blob":
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        r = np.ones_like(t)
        for k in (2, 3, 4):
            r += rng.uniform(0, 0.3 / k * 2) * np.cos(k * t + rng.uniform(0, 2 * math.pi))
        r /= r.max()
        return _Shape([(np.stack([r * np.cos(t), r * np.sin(t)], 1), True)]), kind
    if kind == "partial":
        # A class shape cut by a straight line: a hard negative (half a star is no star).
        base = _class_shape(int(rng.integers(len(CLASSES))), rng)
        a = rng.uniform(0, 2 * math.pi)
        c, s = math.cos(a), math.sin(a)
        cut = _rect(rng.uniform(-0.3, 0.2), -2, 2, 2) @ np.array([[c, s], [-s, c]])
        return _Shape(base.fill + [(cut, False)], base.detail), kind
    # line: a long thin bar; its length is set by the caller's size, its width here
    return _Shape([(_rect(-1, -1, 1, 1), True)]), kind


# ---------------------------------------------------------------------------------------------
# Layout: rasterised masks, placement with occlusion bookkeeping, visible boxes.


@dataclass
class _Item:
    label: int  # class index, -1 for a distractor
    kind: str  # class name or distractor kind
    y0: int  # crop origin in the image (may be negative: truncated by the border)
    x0: int
    alpha: np.ndarray  # [h, w] float32 coverage in [0, 1]
    detail: Optional[np.ndarray]  # [h, w] float32 coverage of the detail colour, or None
    mask: np.ndarray  # [h, w] bool, alpha >= 0.5
    cue: Optional[np.ndarray]  # [h, w] int16 cue disc of each pixel, -1: none (labelled only)
    full: int = 0  # pixels of mask (in or out of the frame)
    visible: int = 0  # pixels where this item is on top
    cue_full: Optional[np.ndarray] = None  # [K] pixels of each cue disc
    cue_alive: Optional[np.ndarray] = None  # [h, w] bool cue pixels in frame, not yet covered
    cue_count: Optional[np.ndarray] = None  # [K] alive pixels of each cue disc


@dataclass
class Layout:
    """The geometry of one image: items back to front, their owner map and the annotations.

    ``annotations``: one ``(label, x, y, w, h)`` per visible labelled object (visible boxes).
    ``owner``: [S, S] int16, the index of the item on top at each pixel (-1: background).
    """

    size: int
    items: List[_Item]
    owner: np.ndarray
    annotations: List[Tuple[int, int, int, int, int]]


def _raster(polys: Sequence[Tuple[np.ndarray, bool]], h: int, w: int) -> np.ndarray:
    """Coverage [h, w] float32 of polygons (crop pixel coordinates), drawn at 4x and reduced."""
    k = _SUPERSAMPLE
    img = Image.new("L", (w * k, h * k), 0)
    draw = ImageDraw.Draw(img)
    for poly, keep in polys:
        draw.polygon([(float(x), float(y)) for x, y in poly * k], fill=255 if keep else 0)
    return np.asarray(img.reduce(k), dtype=np.float32) / 255.0


def _rasterise(shape: _Shape, size: float, aspect: float, theta: float, frac: np.ndarray,
               width: Optional[float] = None):
    """Draws ``shape`` scaled to ``size`` px (``width``: the minor half-extent of a line).

    Returns (alpha, detail, cue): [h, w] crop arrays (float32 coverages; int16 index of the cue
    disc of each pixel, -1 outside them, or None without cues).
    """
    half = np.array([size / 2 * math.sqrt(aspect), size / 2 / math.sqrt(aspect)])
    if width is not None:
        half = np.array([size / 2, width])
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, s], [-s, c]])

    def to_px(poly):
        return (poly * half) @ rot

    pts = np.concatenate([to_px(p) for p, keep in shape.fill if keep])
    lo, hi = pts.min(0), pts.max(0)
    w = int(math.ceil(hi[0] - lo[0])) + 3
    h = int(math.ceil(hi[1] - lo[1])) + 3
    offset = -lo + 1 + frac  # crop coordinates of the shape centre
    alpha = _raster([(to_px(p) + offset, keep) for p, keep in shape.fill], h, w)
    detail = None
    if shape.detail:
        detail = _raster([(to_px(p) + offset, True) for p in shape.detail], h, w)
    cue = None
    if shape.cues:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
        cue = np.full((h, w), -1, dtype=np.int16)
        for k, (x, y, r) in enumerate(shape.cues):
            px, py = to_px(np.array([[x, y]]))[0] + offset
            rad = r * size / 2
            cue[((xx - px) ** 2 + (yy - py) ** 2 <= rad * rad) & (cue < 0)] = k
    return alpha, detail, cue


def _num_objects(spec: ShapesSpec, rng: np.random.Generator) -> int:
    if spec.max_objects == 0 or rng.random() < spec.empty_fraction:
        return 0
    m = spec.max_objects
    u = rng.random()
    if u < 0.5:
        lo, hi = 1, max(1, m * 8 // 30)
    elif u < 0.85:
        lo, hi = max(1, m * 8 // 30), max(1, m * 18 // 30)
    else:
        lo, hi = max(1, m * 18 // 30), m
    return int(rng.integers(lo, hi + 1))


# Nominal diameters of the COCO size ranges (a box is about 1.1 times the diameter: rotated
# squares are wider, stars narrower) and the share of objects drawn from each.
_SIZE_EDGES = (28.0, 95.0)
_SIZE_PROBS = (0.25, 0.45, 0.30)


def _sample_sizes(spec: ShapesSpec, n: int, rng: np.random.Generator) -> List[float]:
    """Nominal diameters of ``n`` objects: a size range each (small/medium/large with
    :data:`_SIZE_PROBS`), log-uniform inside it; once the objects would cover the image about
    once over, the rest are small (a crowded image holds many small objects, not many large)."""
    top = max(spec.max_size_fraction * spec.image_size, spec.min_size * 1.5)
    edges = [spec.min_size] + [min(max(e, spec.min_size), top) for e in _SIZE_EDGES] + [top]
    budget = 1.5 * float(spec.image_size) ** 2
    sizes, large = [], 0
    for _ in range(n):
        bucket = int(rng.choice(3, p=_SIZE_PROBS))
        if bucket == 2:  # a third large object would rarely fit
            large += 1
            bucket = 1 if large > 2 else 2
        lo, hi = edges[bucket], edges[bucket + 1]
        if hi <= lo:
            lo, hi = edges[0], max(edges[1], edges[0] * 1.5)
        size = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        if size * size > budget:
            size = float(math.exp(rng.uniform(math.log(edges[0]), math.log(edges[1]))))
        budget -= size * size
        sizes.append(size)
    return sizes


def _intersection(a: _Item, b_y0: int, b_x0: int, b_shape: Tuple[int, int]):
    """Slices of ``a``'s crop and of crop ``b`` that overlap, or None."""
    y0, x0 = max(a.y0, b_y0), max(a.x0, b_x0)
    y1 = min(a.y0 + a.mask.shape[0], b_y0 + b_shape[0])
    x1 = min(a.x0 + a.mask.shape[1], b_x0 + b_shape[1])
    if y0 >= y1 or x0 >= x1:
        return None
    sa = (slice(y0 - a.y0, y1 - a.y0), slice(x0 - a.x0, x1 - a.x0))
    sb = (slice(y0 - b_y0, y1 - b_y0), slice(x0 - b_x0, x1 - b_x0))
    return sa, sb


def _try_place(spec, items, owner, item: _Item, y0: int, x0: int) -> bool:
    """Places ``item`` on top at (y0, x0) if no labelled object loses too much; updates state."""
    S = spec.image_size
    h, w = item.mask.shape
    iy0, ix0, iy1, ix1 = max(y0, 0), max(x0, 0), min(y0 + h, S), min(x0 + w, S)
    if iy0 >= iy1 or ix0 >= ix1:
        return False
    inner = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
    m_in = item.mask[inner]
    in_frame = np.zeros_like(item.mask)
    in_frame[inner] = True
    if item.label >= 0:  # the border hides it like an occluder would
        if m_in.sum() < spec.min_visible * item.full:
            return False
        cue_alive = (item.cue >= 0) & in_frame
        cue_count = np.bincount(item.cue[cue_alive], minlength=len(item.cue_full))
        if (cue_count < _CUE_VISIBLE * item.cue_full).any():
            return False
    region = owner[iy0:iy1, ix0:ix1]
    covered = np.bincount(region[m_in].astype(np.int64) + 1, minlength=len(items) + 1)[1:]
    cue_loss = {}
    for j, other in enumerate(items):
        if other.label < 0:
            continue
        if covered[j] and other.visible - covered[j] < spec.min_visible * other.full:
            return False
        inter = _intersection(other, y0, x0, (h, w))
        if inter is not None:
            sa, sb = inter
            lost = other.cue_alive[sa] & item.mask[sb]
            if lost.any():
                lost_count = np.bincount(other.cue[sa][lost], minlength=len(other.cue_full))
                if (other.cue_count - lost_count < _CUE_VISIBLE * other.cue_full).any():
                    return False
                cue_loss[j] = (sa, sb, lost, lost_count)
    # accepted
    for j in np.nonzero(covered)[0]:
        items[j].visible -= int(covered[j])
    for j, (sa, sb, lost, lost_count) in cue_loss.items():
        items[j].cue_alive[sa] &= ~lost
        items[j].cue_count = items[j].cue_count - lost_count
    region[m_in] = len(items)
    item.y0, item.x0 = y0, x0
    item.visible = int(m_in.sum())
    if item.label >= 0:
        item.cue_alive, item.cue_count = cue_alive, cue_count
    items.append(item)
    return True


def layout_image(spec: ShapesSpec, split: str, index: int) -> Layout:
    """The geometry and annotations of image ``index`` of ``split`` (no painting)."""
    rng = _rngs(spec, split, index)[0]
    S = spec.image_size
    n = _num_objects(spec, rng)
    n_distract = int(rng.integers(0, spec.max_distractors + 1))
    sizes = _sample_sizes(spec, n, rng)
    todo = []  # (z key, label, shape, kind, size, aspect, theta, width)
    for k in range(n + n_distract):
        if k < n:
            label = int(rng.integers(len(CLASSES)))
            shape, kind = _class_shape(label, rng), CLASSES[label]
            size = sizes[k]
        else:
            label = -1
            shape, kind = _distractor_shape(rng)
            hi = max(0.4 * S, spec.min_size * 1.5)
            size = float(math.exp(rng.uniform(math.log(spec.min_size), math.log(hi))))
        aspect = float(rng.uniform(0.8, 1.25))
        theta = float(rng.uniform(-shape.max_rotation, shape.max_rotation))
        width = None
        if kind == "line":
            size = float(rng.uniform(0.3, 1.2) * S)
            width = float(rng.uniform(0.5, 1.5))
        # Large items tend to lie behind small ones (fewer rejections), with exceptions.
        z = math.log(size) + rng.normal(0, 0.25) if width is None else rng.uniform(2.0, 5.5)
        todo.append((z, label, shape, kind, size, aspect, theta, width))
    todo.sort(key=lambda t: -t[0])

    items: List[_Item] = []
    owner = np.full((S, S), -1, dtype=np.int16)
    for _, label, shape, kind, size, aspect, theta, width in todo:
        frac = rng.random(2)
        alpha, detail, cue = _rasterise(shape, size, aspect, theta, frac, width)
        mask = alpha >= 0.5
        item = _Item(label, kind, 0, 0, alpha, detail, mask, cue if label >= 0 else None)
        item.full = int(mask.sum())
        if item.full == 0:
            continue
        if label >= 0:
            item.cue_full = np.bincount(cue[cue >= 0], minlength=len(shape.cues))
        # Crop origins that keep most of the item in the frame (large items would rarely fit
        # if drawn anywhere); truncation by the border is still possible.
        hw = np.array(mask.shape, dtype=np.float64)
        inside = (np.minimum(0, S - hw), np.maximum(0, S - hw) + 1)
        loose = (-0.25 * hw, np.maximum(S - 0.75 * hw, 1 - 0.25 * hw))
        for _ in range(_PLACEMENT_TRIES):
            lo, hi = inside if rng.random() < 0.75 else loose
            y0, x0 = (int(v) for v in np.floor(rng.uniform(lo, hi)))
            if _try_place(spec, items, owner, item, y0, x0):
                break

    annotations = []
    for j, item in enumerate(items):
        if item.label < 0:
            continue
        h, w = item.mask.shape
        iy0, ix0 = max(item.y0, 0), max(item.x0, 0)
        mine = owner[iy0:min(item.y0 + h, S), ix0:min(item.x0 + w, S)] == j
        ys, xs = np.nonzero(mine.any(1))[0], np.nonzero(mine.any(0))[0]
        if len(ys) == 0:  # pragma: no cover - excluded by the visibility checks
            continue
        annotations.append((item.label, ix0 + int(xs[0]), iy0 + int(ys[0]),
                            int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)))
    return Layout(S, items, owner, annotations)


# ---------------------------------------------------------------------------------------------
# Paint: backgrounds, colours, compositing, blur and noise.


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A random RGB colour (float32 [3], 0..255), uniform in hue, any saturation/brightness."""
    h, s, v = rng.random(), rng.uniform(0.0, 1.0), rng.uniform(0.12, 1.0)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float32) * 255


def _distinct_colour(rng, other: np.ndarray, min_dist: float, tries: int = 6) -> np.ndarray:
    for _ in range(tries):
        c = _colour(rng)
        if np.linalg.norm(c - other) >= min_dist:
            break
    return c


def _pattern(kind: str, S: int, rng: np.random.Generator) -> np.ndarray:
    """A [S, S] float32 pattern in [0, 1] (mixing weight between two colours)."""
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / S
    a = rng.uniform(0, 2 * math.pi)
    u = xx * math.cos(a) + yy * math.sin(a)
    if kind == "gradient":
        return (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    if kind == "noise":
        g = int(rng.integers(3, 16))
        grid = Image.fromarray((rng.random((g, g)) * 255).astype(np.uint8))
        return np.asarray(grid.resize((S, S), Image.BICUBIC), dtype=np.float32) / 255
    if kind == "stripes":
        period = rng.uniform(4, 28) / S
        wave = 0.5 + 0.5 * np.sin(2 * math.pi * u / period)
        return wave if rng.random() < 0.5 else (wave > 0.5).astype(np.float32)
    if kind == "checker":
        cell = rng.uniform(4, 32) / S
        v = -xx * math.sin(a) + yy * math.cos(a)
        return ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    # "grain": fine speckle
    return rng.random((S, S)).astype(np.float32)


_PATTERNS = ("flat", "gradient", "noise", "stripes", "checker", "grain")


def _background(S: int, rng: np.random.Generator) -> np.ndarray:
    c1 = _colour(rng)
    img = np.broadcast_to(c1, (S, S, 3)).astype(np.float32)
    for layer in range(1 + int(rng.random() < 0.5)):
        kind = _PATTERNS[int(rng.integers(len(_PATTERNS)))]
        if kind == "flat":
            continue
        c2 = c1 + rng.uniform(0.2, 1.0) * (_colour(rng) - c1)
        t = _pattern(kind, S, rng)[..., None]
        strength = 1.0 if layer == 0 else rng.uniform(0.25, 0.6)
        if kind == "grain":  # full-contrast speckle would drown small objects entirely
            strength *= rng.uniform(0.15, 0.6)
        img = img * (1 - strength * t) + strength * t * c2
    return img


def render_image(layout: Layout, spec: ShapesSpec, split: str, index: int) -> np.ndarray:
    """Paints ``layout`` (from :func:`layout_image` of the same arguments): [S, S, 3] uint8 RGB."""
    rng = _rngs(spec, split, index)[1]
    S = layout.size
    img = _background(S, rng)
    for item in layout.items:
        h, w = item.alpha.shape
        iy0, ix0 = max(item.y0, 0), max(item.x0, 0)
        iy1, ix1 = min(item.y0 + h, S), min(item.x0 + w, S)
        crop = (slice(iy0 - item.y0, iy1 - item.y0), slice(ix0 - item.x0, ix1 - item.x0))
        under = img[iy0:iy1, ix0:ix1]
        local_mean = under.reshape(-1, 3).mean(0)
        base = _distinct_colour(rng, local_mean, 60.0)
        second = _distinct_colour(rng, base, 90.0)
        hh, ww = iy1 - iy0, ix1 - ix0
        # Soft shading across the object, so that flat colour is not a cue either.
        ramp = np.linspace(-1, 1, ww, dtype=np.float32)[None, :] * rng.uniform(-1, 1)
        ramp = ramp + np.linspace(-1, 1, hh, dtype=np.float32)[:, None] * rng.uniform(-1, 1)
        layer = base * (1 + 0.12 * ramp[..., None])
        if item.detail is not None:
            d = item.detail[crop][..., None]
            layer = layer * (1 - d) + second * d
        alpha = item.alpha[crop]
        if item.kind != "line" and rng.random() < 0.3:  # outline in the second colour
            a_img = Image.fromarray((item.alpha * 255).astype(np.uint8))
            inner = np.asarray(a_img.filter(ImageFilter.MinFilter(3)), np.float32)[crop] / 255
            o = np.clip(alpha - inner, 0, 1)[..., None]
            layer = layer * (1 - o) + second * o
        a = alpha[..., None]
        img[iy0:iy1, ix0:ix1] = under * (1 - a) + np.clip(layer, 0, 255) * a
    # Global contrast/brightness jitter, blur, then sensor-like noise.
    img = (img - 128) * rng.uniform(0.75, 1.15) + 128 + rng.uniform(-15, 15)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if rng.random() < 0.4:
        out = out.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.1))))
    arr = np.asarray(out, dtype=np.float32)
    if rng.random() < 0.7:
        arr = arr + rng.normal(0, rng.uniform(2, 10), arr.shape).astype(np.float32)
    return np.clip(arr + 0.5, 0, 255).astype(np.uint8)


def make_image(spec: ShapesSpec, split: str, index: int) -> Tuple[np.ndarray, Layout]:
    """Image ``index`` of ``split``: ([S, S, 3] uint8 RGB, its layout with the annotations)."""
    layout = layout_image(spec, split, index)
    return render_image(layout, spec, split, index), layout


def layout_statistics(spec: ShapesSpec, split: str = "val",
                      num_images: Optional[int] = None) -> Dict:
    """Statistics of ``spec`` from the layouts alone (no rendering), over the first
    ``num_images`` of ``split``: objects per image, COCO size ranges, objects per class."""
    n = spec.num_images(split) if num_images is None else num_images
    counts, sizes, classes = [], {"small": 0, "medium": 0, "large": 0}, [0] * len(CLASSES)
    for i in range(n):
        anns = layout_image(spec, split, i).annotations
        counts.append(len(anns))
        for label, _, _, w, h in anns:
            sizes[size_bucket(w * h)] += 1
            classes[label] += 1
    c = np.asarray(counts, dtype=np.int64)
    return {"images": n, "objects": int(c.sum()),
            "per_image_mean": float(c.mean()) if n else 0.0,
            "per_image_max": int(c.max()) if n else 0, "empty_images": int((c == 0).sum()),
            "sizes": sizes, "classes": dict(zip(CLASSES, classes))}
