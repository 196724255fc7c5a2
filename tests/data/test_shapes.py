"""The shapes generator (d2kd.data.shapes): determinism, geometry, statistics. No files."""
import numpy as np
import pytest

from d2kd.data.builtin import DEFAULT_SPEC, TINY_SPEC
from d2kd.data.shapes import (
    CLASSES,
    ShapesSpec,
    layout_image,
    layout_statistics,
    make_image,
    size_bucket,
)


def test_image_depends_only_on_seed_split_index():
    small = ShapesSpec(num_train=3, num_val=2, image_size=TINY_SPEC.image_size)
    for split, index in (("train", 0), ("train", 2), ("val", 1)):
        a, la = make_image(TINY_SPEC, split, index)
        b, lb = make_image(small, split, index)  # other split sizes, same image
        assert a.dtype == np.uint8 and a.shape == (128, 128, 3)
        assert np.array_equal(a, b) and la.annotations == lb.annotations
    # another split, index or seed gives another image
    base = make_image(TINY_SPEC, "train", 0)[0]
    assert not np.array_equal(base, make_image(TINY_SPEC, "val", 0)[0])
    assert not np.array_equal(base, make_image(TINY_SPEC, "train", 1)[0])
    other_seed = ShapesSpec(num_train=1, num_val=1, image_size=128, seed=1)
    assert not np.array_equal(base, make_image(other_seed, "train", 0)[0])


def test_layout_alone_gives_the_rendered_annotations():
    for index in range(3):
        _, layout = make_image(DEFAULT_SPEC, "val", index)
        assert layout_image(DEFAULT_SPEC, "val", index).annotations == layout.annotations


def test_boxes_are_visible_extents_inside_the_image():
    spec = DEFAULT_SPEC
    for index in range(20):
        layout = layout_image(spec, "train", index)
        owner = layout.owner
        for j, item in enumerate(layout.items):
            if item.label < 0:
                continue
            # the item is on top on at least min_visible of its pixels
            assert item.visible >= spec.min_visible * item.full
            assert item.visible == int((owner == j).sum())
        labelled = [j for j, it in enumerate(layout.items) if it.label >= 0]
        assert len(labelled) == len(layout.annotations)
        for j, (label, x, y, w, h) in zip(labelled, layout.annotations):
            assert 0 <= label < len(CLASSES)
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= spec.image_size and y + h <= spec.image_size
            ys, xs = np.nonzero(owner == j)  # tight around the visible pixels
            assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())


def test_default_spec_statistics():
    """Computed from the layouts of 150 validation images (no rendering)."""
    stats = layout_statistics(DEFAULT_SPEC, "val", 150)
    total = stats["objects"]
    assert 5 <= stats["per_image_mean"] <= 15
    assert stats["per_image_max"] <= DEFAULT_SPEC.max_objects
    assert stats["empty_images"] >= 1
    for bucket in ("small", "medium", "large"):  # AP_S, AP_M and AP_L all mean something
        assert stats["sizes"][bucket] >= 0.05 * total, stats["sizes"]
    assert len(stats["classes"]) == len(CLASSES) >= 10
    assert min(stats["classes"].values()) >= 0.5 * total / len(CLASSES), stats["classes"]


def test_size_buckets_follow_coco():
    assert size_bucket(31 * 32) == "small" and size_bucket(32 * 32) == "medium"
    assert size_bucket(96 * 96) == "medium" and size_bucket(96 * 96 + 1) == "large"


def test_spec_is_frozen_and_validated():
    with pytest.raises(Exception):
        DEFAULT_SPEC.seed = 3
    with pytest.raises(ValueError):
        ShapesSpec(image_size=16)
    with pytest.raises(ValueError):
        ShapesSpec(num_train=-1)
    assert ShapesSpec(max_objects=0).num_images("val") == 500
    layout = layout_image(ShapesSpec(max_objects=0), "train", 0)
    assert layout.annotations == []
