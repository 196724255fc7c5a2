"""Store identity details: image keys and duplicates, the dump lock, the teacher's run settings
(flip_channels, amp_dtype), teacher-side method identity, and the choice of views."""
import logging

import detectron2.data.transforms as T
import numpy as np
import pytest
from detectron2.config import LazyCall as L
from detectron2.config import instantiate

from d2kd.distill.unikd import UniKD
from d2kd.meta_arch import FrozenTeacher
from d2kd.offline import KnowledgeStore, KnowledgeStoreError, StoreWriter, image_key, teacher_identity
from d2kd.offline.config import offline_teacher
from d2kd.offline.dump import teacher_parts
from d2kd.offline.identity import check_unique_keys, describe_differences, method_identity
from d2kd.offline.store import StoreCorruptError
from d2kd.offline.views import View, views_from_augmentations

UNIKD = "unikd/dino_to_frcnn_R18_offline_builtin.py"


def _header(num_items=2):
    return {"identity": {"teacher": {}}, "float_dtype": "float16",
            "plan": {"num_images": num_items, "num_views": 1, "num_items": num_items, "shard_size": 8}}


def _item():
    import torch

    return {"m": {"x": torch.zeros(2)}}


# --------------------------------------------------------------------------- keys
def test_digit_strings_are_never_read_as_integers():
    assert image_key(12) == 12
    assert len({image_key("0012"), image_key("12"), image_key(12)}) == 3
    assert image_key("12") == image_key("12")  # stable


def test_duplicate_image_keys_are_refused_when_dumping():
    check_unique_keys([{"image_id": 1}, {"image_id": "1"}, {"image_id": "01"}])  # three images
    with pytest.raises(KnowledgeStoreError, match=r"image ids 'a' and 'a' give the same store key"):
        check_unique_keys([{"image_id": "a"}, {"image_id": 5}, {"image_id": "a"}])


def test_duplicate_records_are_refused_when_reading(tmp_path):
    with StoreWriter(str(tmp_path), _header()) as writer:
        writer.write_shard(0, [(7, 0), (7, 0)], [_item(), _item()])  # (key, view) twice
    store = KnowledgeStore(str(tmp_path))
    with pytest.raises(StoreCorruptError, match=r"image key 7 view 0 is stored twice \(shard 0 row 0 and shard 0 row 1\)"):
        store.read(7, 0)


# --------------------------------------------------------------------------- lock
def test_a_second_dump_of_the_same_store_is_refused_until_the_first_ends(tmp_path):
    first = StoreWriter(str(tmp_path), _header())
    with pytest.raises(KnowledgeStoreError, match="being written by another dump"):
        StoreWriter(str(tmp_path), _header(), resume=True)
    first.write_shard(0, [(1, 0), (2, 0)], [_item(), _item()])
    first.close()
    with pytest.raises(KnowledgeStoreError, match="writer was closed"):
        first.write_shard(0, [(1, 0), (2, 0)], [_item(), _item()])
    with StoreWriter(str(tmp_path), _header(), resume=True) as again:  # free again
        assert again.pending_shards() == []
    KnowledgeStore(str(tmp_path), verify="eager")


# --------------------------------------------------------------------------- teacher run settings
def test_flip_channels_and_amp_dtype_reach_the_offline_teacher_and_its_identity(tiny):
    cfg = tiny.config(UNIKD, online=True)  # the online twin's FrozenTeacher node
    cfg.model.teacher.flip_channels = True
    cfg.model.teacher.amp_dtype = "bfloat16"
    node = offline_teacher(cfg.model.teacher, store="")
    assert node.flip_channels is True and node.amp_dtype == "bfloat16"
    model_cfg, weights, options = teacher_parts(node)
    assert options == {"allow_uninitialized": False, "flip_channels": True, "amp_dtype": "bfloat16"}
    assert teacher_parts(cfg.model.teacher)[2] == options  # the same from the online node
    plain = teacher_identity(model_cfg, "")
    flipped = teacher_identity(model_cfg, "", flip_channels=True)
    assert describe_differences(plain, flipped, "teacher") == ["teacher.flip_channels: store false, config true"]
    assert describe_differences(plain, teacher_identity(model_cfg, "", amp_dtype="float16"), "teacher") == [
        "teacher.amp_dtype: store null, config 'float16'"]
    # simulate mode builds the teacher with them
    cfg.model.teacher = node
    cfg.model.teacher.simulate, cfg.model.teacher.allow_uninitialized = True, True
    teacher = instantiate(cfg.model.teacher)
    assert teacher.frozen.flip_channels and teacher.frozen.amp_dtype == "bfloat16"


# --------------------------------------------------------------------------- teacher-side identity
def test_unikd_store_identity_has_no_student_side_settings():
    node = L(UniKD)(ake=L(FrozenTeacher)(model=None), student_channels=64, adaptor_layers=2, lambda_ct=10.0)
    other = L(UniKD)(ake=L(FrozenTeacher)(model=None), student_channels=256, adaptor_layers=1, adaptor_heads=4,
                     lambda_ct=1.0, lambda_pos=3.0, adaptor_ffn_dim=64)
    assert method_identity(node) == method_identity(other)
    assert sorted(method_identity(node)["args"]) == ["ake", "matcher"]
    assert method_identity(node) != method_identity(L(UniKD)(ake=L(FrozenTeacher)(model=1), student_channels=64))


# --------------------------------------------------------------------------- views
COCO_AUGS = [T.ResizeShortestEdge((640, 672, 704, 736, 768, 800), max_size=1333, sample_style="choice"),
             T.RandomFlip()]


def test_views_cross_scale_with_flip(caplog):
    with caplog.at_level(logging.WARNING, logger="d2kd.offline.views"):
        views, _ = views_from_augmentations(COCO_AUGS, 2)
    # one scale under both flip states (flip is never tied to scale)
    assert views == [View(736, 1333, False), View(736, 1333, True)]
    assert "2 offline views cover 2 of the 12 resize/flip choices" in caplog.text
    views, _ = views_from_augmentations(COCO_AUGS, 4)
    assert views == [View(800, 1333, False), View(800, 1333, True), View(640, 1333, False), View(640, 1333, True)]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="d2kd.offline.views"):
        views, _ = views_from_augmentations(COCO_AUGS, 12)
    assert len(set(views)) == 12 and "cover" not in caplog.text  # the whole augmentation
    assert {v.short_edge for v in views} == {640, 672, 704, 736, 768, 800} and {v.flip for v in views} == {False, True}
    # the built-in data (one size + flip): K = 2 covers it exactly
    views, _ = views_from_augmentations([T.ResizeShortestEdge(192, max_size=384), T.RandomFlip()], 2)
    assert views == [View(192, 384, False), View(192, 384, True)]
    views, _ = views_from_augmentations(COCO_AUGS, 3)
    assert [(v.short_edge, v.flip) for v in views] == [(800, False), (800, True), (640, False)]
    assert np.unique([v.max_size for v in views]).tolist() == [1333]
