"""Checks of detectron2 data set dicts, run when a data set is loaded for training.

- :func:`check_images`: every image file exists, is not empty and has a readable header (PIL
  reads the header only, not the pixels). A bad image is an error naming the data set, the file
  and the image id: before this check an empty image crashed the training at whichever iteration
  first drew it.
- :func:`drop_bad_boxes`: annotations whose box is not finite, has a width or height <= 0, or
  lies entirely outside the image are removed, with one warning that gives the count and the
  first example. Boxes that only stick out of the image are kept (detectron2's mapper clips them).
  COCO-style data has a few such boxes (COCO train2017: degenerate boxes of zero width or
  height), so they are dropped rather than refused; detectron2's ``load_coco_json`` does not keep
  annotation ids, so the example is named by the image and the annotation's index in it.
"""
import logging
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)


def _dataset_error(message: str) -> Exception:
    from d2kd.engine.errors import DatasetError

    return DatasetError(message)


def check_images(dicts: Sequence[Dict], name: str) -> None:
    """Raises :class:`~d2kd.engine.errors.DatasetError` for the first image of ``dicts`` (data
    set ``name``) that is missing, empty or unreadable."""
    from PIL import Image, UnidentifiedImageError

    for d in dicts:
        path = d.get("file_name", "")
        where = f"data set {name!r}: image {path!r} (image id {d.get('image_id')})"
        try:
            size = os.path.getsize(path)
        except OSError:
            raise _dataset_error(f"{where} does not exist") from None
        if size == 0:
            raise _dataset_error(f"{where} is an empty (0-byte) file")
        try:
            with Image.open(path) as im:
                width, height = im.size
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise _dataset_error(f"{where} is not a readable image ({e})") from None
        expected = (d.get("width"), d.get("height"))
        if None not in expected and (width, height) != tuple(expected):
            raise _dataset_error(
                f"{where} is {width}x{height} but its annotations say "
                f"{expected[0]}x{expected[1]}")


def box_problem(annotation: Dict, width: Optional[int], height: Optional[int]) -> Optional[str]:
    """Why the box of ``annotation`` (detectron2 format) cannot be trained on, or None."""
    from detectron2.structures import BoxMode

    x0, y0, x1, y1 = (float(v) for v in BoxMode.convert(
        list(annotation["bbox"]), annotation["bbox_mode"], BoxMode.XYXY_ABS))
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return "is not finite"
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return f"has width {x1 - x0:g} and height {y1 - y0:g}"
    if width is not None and height is not None:
        if min(x1, width) - max(x0, 0.0) <= 0 or min(y1, height) - max(y0, 0.0) <= 0:
            return f"lies outside the {width}x{height} image"
    return None


def drop_bad_boxes(dicts: List[Dict], name: str) -> Tuple[List[Dict], int]:
    """``dicts`` without the annotations :func:`box_problem` refuses; returns it and the count.

    The dicts that lose annotations are copied (the data set's own list is not modified).
    """
    out, dropped, example = [], 0, None
    for d in dicts:
        annotations = d.get("annotations")
        if not annotations:
            out.append(d)
            continue
        keep = []
        for k, a in enumerate(annotations):
            problem = box_problem(a, d.get("width"), d.get("height"))
            if problem is None:
                keep.append(a)
            else:
                dropped += 1
                if example is None:
                    example = f"annotation #{k} of {d.get('file_name')!r} {problem}"
        out.append(d if len(keep) == len(annotations) else dict(d, annotations=keep))
    if dropped:
        total = sum(len(d.get("annotations", ())) for d in dicts)
        logger.warning("Data set %s: dropped %d of %d boxes that cannot be trained on (zero or "
                       "negative width/height, not finite, or outside the image); e.g. %s",
                       name, dropped, total, example)
    return out, dropped
