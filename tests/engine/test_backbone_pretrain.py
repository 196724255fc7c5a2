"""Built-in pretrained backbones: determinism, atomic writes, reuse, clear errors, and the
built-in configs loading them as ImageNet weights are loaded."""
import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from d2kd.data import DEFAULT_SPEC
from d2kd.data.crops import BACKGROUND, CropSpec, crops_of_image, make_crops
from d2kd.engine import backbone_pretrain as bp
from d2kd.engine.checkpoint import check_checkpoint_file

TINY = bp.PretrainRecipe(depth=18, steps=3, batch_size=8, warmup_steps=1, val_images=2,
                         crops=CropSpec(num_images=3, crop_size=32))


def _quiet(_msg):
    pass


def test_crops_are_bgr_objects_and_background():
    images, labels = crops_of_image(DEFAULT_SPEC, CropSpec(), 0)
    from d2kd.data.shapes import make_image

    _, layout = make_image(DEFAULT_SPEC, "pretrain", 0)
    assert images.shape[1:] == (64, 64, 3) and images.dtype == np.uint8
    assert labels[: len(layout.annotations)].tolist() == [a[0] for a in layout.annotations]
    assert (labels[len(layout.annotations):] == BACKGROUND).all()
    # the pretrain split is its own: not the detection training images
    from d2kd.data.shapes import make_image as mk

    assert not np.array_equal(mk(DEFAULT_SPEC, "pretrain", 0)[0], mk(DEFAULT_SPEC, "train", 0)[0])


def test_make_crops_does_not_depend_on_workers():
    spec = CropSpec(num_images=4, crop_size=32)
    a = make_crops(DEFAULT_SPEC, spec, num_workers=1)
    b = make_crops(DEFAULT_SPEC, spec, num_workers=2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_pretraining_is_deterministic_for_a_seed():
    torch.set_num_threads(1)
    a = bp.pretrain_backbone(TINY, DEFAULT_SPEC, log=_quiet)["state_dict"]
    b = bp.pretrain_backbone(TINY, DEFAULT_SPEC, log=_quiet)["state_dict"]
    c = bp.pretrain_backbone(dataclasses.replace(TINY, seed=1), DEFAULT_SPEC, log=_quiet)["state_dict"]
    assert a.keys() == b.keys() and "stem.conv1.weight" in a and "res5.1.conv2.weight" in a
    assert not any(k.startswith("fc") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_write_reuse_and_verify(tmp_path):
    path = str(tmp_path / "BuiltinPretrained" / "R-18.pth")
    bp.ensure_backbone(TINY, DEFAULT_SPEC, path=path, log=_quiet)
    manifest = bp.verify_weights(path, TINY, DEFAULT_SPEC)
    assert manifest["recipe"]["depth"] == 18 and len(manifest["sha256"]) == 64
    data = torch.load(path, weights_only=False)
    assert data["matching_heuristics"] is True and "res2.0.conv1.weight" in data["model"]

    def fail(*a, **k):
        raise AssertionError("a verified file must be reused, not retrained")

    orig = bp.pretrain_backbone
    bp.pretrain_backbone = fail
    try:
        assert bp.ensure_backbone(TINY, DEFAULT_SPEC, path=path, log=_quiet) == path
    finally:
        bp.pretrain_backbone = orig
    # another recipe is not reused
    with pytest.raises(bp.PretrainedWeightsError, match="another recipe"):
        bp.verify_weights(path, dataclasses.replace(TINY, steps=4), DEFAULT_SPEC)


def test_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "BuiltinPretrained" / "R-18.pth")
    bp.ensure_backbone(TINY, DEFAULT_SPEC, path=path, log=_quiet)
    before = open(path, "rb").read()
    result = bp.pretrain_backbone(dataclasses.replace(TINY, seed=3), DEFAULT_SPEC, log=_quiet)

    def broken_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(bp.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        bp.write_weights(path, result, TINY, DEFAULT_SPEC)
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(os.path.dirname(path))) == ["R-18.json", "R-18.pth"]  # no temporaries
    bp.verify_weights(path, TINY, DEFAULT_SPEC)


def test_corrupt_or_foreign_files_are_rejected_by_name(tmp_path):
    path = str(tmp_path / "BuiltinPretrained" / "R-18.pth")
    bp.ensure_backbone(TINY, DEFAULT_SPEC, path=path, log=_quiet)
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    with pytest.raises(bp.PretrainedWeightsError, match=r"R-18\.pth.*corrupt.*pretrain_backbone --depth 18"):
        bp.verify_weights(path)
    with pytest.raises(bp.PretrainedWeightsError, match="corrupt"):
        check_checkpoint_file(path, what="train.init_checkpoint")  # what train_net checks at start
    # a corrupt file is retrained by the tool, not reused
    bp.ensure_backbone(TINY, DEFAULT_SPEC, path=path, log=_quiet)
    bp.verify_weights(path, TINY, DEFAULT_SPEC)

    manifest_file = path[:-4] + ".json"
    manifest = json.load(open(manifest_file))
    for key, value, message in (("tool_version", 0, "tool version 0"),
                                ("generator_version", 99, "generator version 99")):
        json.dump(dict(manifest, **{key: value}), open(manifest_file, "w"))
        with pytest.raises(bp.PretrainedWeightsError, match=message):
            bp.verify_weights(path)
    json.dump(dict(manifest, shapes_spec=dict(manifest["shapes_spec"], image_size=128)), open(manifest_file, "w"))
    with pytest.raises(bp.PretrainedWeightsError, match="another data spec"):
        bp.verify_weights(path, shapes=DEFAULT_SPEC)
    os.replace(path, str(tmp_path / "BuiltinPretrained" / "R-50.pth"))
    os.replace(manifest_file, str(tmp_path / "BuiltinPretrained" / "R-50.json"))
    json.dump(manifest, open(str(tmp_path / "BuiltinPretrained" / "R-50.json"), "w"))
    with pytest.raises(bp.PretrainedWeightsError, match="holds a ResNet-18, not ResNet-50"):
        bp.verify_weights(str(tmp_path / "BuiltinPretrained" / "R-50.pth"))
    os.remove(str(tmp_path / "BuiltinPretrained" / "R-50.json"))
    with pytest.raises(bp.PretrainedWeightsError, match="no readable manifest"):
        bp.verify_weights(str(tmp_path / "BuiltinPretrained" / "R-50.pth"))


def test_missing_file_says_what_to_run(tmp_path):
    path = str(tmp_path / "BuiltinPretrained" / "R-50.pth")
    with pytest.raises(bp.PretrainedWeightsError, match="not found.*pretrain_backbone --depth 50"):
        check_checkpoint_file(path, what="train.init_checkpoint")
