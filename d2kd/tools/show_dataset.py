"""Draws annotated samples of a registered data set into one PNG grid, and prints its statistics.

    python -m d2kd.tools.show_dataset --out /tmp/shapes.png [--dataset d2kd_shapes_val]
        [--num 12] [--cols 4] [--scale 2] [--start 0] [--no-boxes]

Each tile is an image (upscaled ``--scale`` times, nearest neighbour) with its boxes and class
names. The statistics (objects per image, COCO size ranges of the box areas, objects per class)
are those of the whole data set. Boxes that cannot be trained on (zero or negative width or
height, not finite, outside the image) are dropped first, as the training loader drops them
(:func:`d2kd.data.validation.drop_bad_boxes`, one warning with the count and an example), and the
statistics count them.
"""
import argparse
import logging
import sys
from collections import Counter
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image, ImageDraw


def _palette(n: int) -> List[tuple]:
    rng = np.random.default_rng(3)
    return [tuple(int(v) for v in rng.integers(80, 256, 3)) for _ in range(n)]


def draw_grid(dicts: Sequence[Dict], class_names: Sequence[str], cols: int = 4,
              scale: int = 2, boxes: bool = True) -> Image.Image:
    """A grid of the images of ``dicts`` (detectron2 format, XYWH/XYXY_ABS boxes) with boxes.

    The boxes must have a positive width and height (``drop_bad_boxes`` removes the others).
    """
    from detectron2.structures import BoxMode

    colours = _palette(len(class_names))
    tiles = []
    for d in dicts:
        img = Image.open(d["file_name"]).convert("RGB")
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        if boxes:
            draw = ImageDraw.Draw(img)
            for a in d.get("annotations", []):
                x0, y0, x1, y1 = BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                c = colours[a["category_id"]]
                draw.rectangle([x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1],
                               outline=c)
                draw.text((x0 * scale + 2, y0 * scale + 1), class_names[a["category_id"]],
                          fill=c)
        tiles.append(img)
    if not tiles:
        raise ValueError("no images to draw")
    w = max(t.width for t in tiles)
    h = max(t.height for t in tiles)
    rows = (len(tiles) + cols - 1) // cols
    pad = 4
    grid = Image.new("RGB", (cols * (w + pad) - pad, rows * (h + pad) - pad), (255, 255, 255))
    for k, t in enumerate(tiles):
        grid.paste(t, ((k % cols) * (w + pad), (k // cols) * (h + pad)))
    return grid


def statistics(dicts: Sequence[Dict], class_names: Sequence[str], dropped: int = 0) -> str:
    """A text table: images, objects per image, COCO size ranges (box area), objects per class,
    and the ``dropped`` boxes (removed from ``dicts`` before) when there are any."""
    from detectron2.structures import BoxMode

    from d2kd.data.shapes import size_bucket

    counts = np.array([len(d.get("annotations", [])) for d in dicts])
    sizes, classes = Counter(), Counter()
    for d in dicts:
        for a in d.get("annotations", []):
            x0, y0, x1, y1 = BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
            sizes[size_bucket((x1 - x0) * (y1 - y0))] += 1
            classes[a["category_id"]] += 1
    total = max(int(counts.sum()), 1)
    lines = [
        f"images {len(dicts)}, objects {int(counts.sum())}, per image mean {counts.mean():.2f} "
        f"median {int(np.median(counts))} max {counts.max()}, empty images "
        f"{int((counts == 0).sum())} ({100 * (counts == 0).mean():.1f}%)",
    ]
    if dropped:
        lines.append(f"dropped boxes {dropped} (zero or negative width/height, not finite, or "
                     "outside the image; not counted below)")
    lines.append("size (box area)  count  share")
    for k in ("small", "medium", "large"):
        lines.append(f"{k:<16} {sizes[k]:>6}  {100 * sizes[k] / total:5.1f}%")
    lines.append("class            count")
    for i, name in enumerate(class_names):
        lines.append(f"{name:<16} {classes[i]:>6}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="d2kd_shapes_val", help="a registered data set")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--num", type=int, default=12, help="images in the grid")
    parser.add_argument("--start", type=int, default=0, help="index of the first image")
    parser.add_argument("--cols", type=int, default=4)
    parser.add_argument("--scale", type=int, default=2, help="upscaling of each image")
    parser.add_argument("--no-boxes", action="store_true", help="images only")
    parser.add_argument("--no-stats", action="store_true", help="skip the statistics")
    args = parser.parse_args(argv)

    import d2kd.data  # noqa: F401  registers the built-in data sets
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from d2kd.data.validation import drop_bad_boxes

    # Shows the one warning of drop_bad_boxes (a logger without handlers would too, unformatted).
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    dicts, dropped = drop_bad_boxes(DatasetCatalog.get(args.dataset), args.dataset)
    names = MetadataCatalog.get(args.dataset).thing_classes
    sample = dicts[args.start: args.start + args.num]
    draw_grid(sample, names, cols=args.cols, scale=args.scale,
              boxes=not args.no_boxes).save(args.out)
    print(f"wrote {args.out} ({len(sample)} images of {args.dataset})")
    if not args.no_stats:
        print(statistics(dicts, names, dropped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
