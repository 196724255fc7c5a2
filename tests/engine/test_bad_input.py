"""Bad input stops train_net.py before launch: exit status 2, one line that names the culprit,
nothing written to the output directory. One table per kind: overrides, teacher-side files,
data; plus the parsing of flags placed after the overrides."""
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KD_CONFIG = os.path.join(ROOT, "configs/kd_detr/dino_to_frcnn_builtin.py")
KD_TINY = (
    "dataloader.train.dataset.names=d2kd_shapes_tiny_train",
    "dataloader.test.dataset.names=d2kd_shapes_tiny_val",
)


def _cli(train_net, capsys, *argv):
    status = train_net.module.cli(list(argv))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("train_net.py: error: "), err[-3000:]
    return lines[0]


@pytest.mark.parametrize("override, expected", [
    ("train.max_iter=abc", ["train.max_iter", "'abc'", "an integer"]),
    ("train.max_iter=2.5", ["train.max_iter", "2.5", "an integer"]),
    ("optimizer.lr=fast", ["optimizer.lr", "'fast'", "a number"]),
    ("train.checkpointer=5", ["train.checkpointer", "5", "a config node"]),
    ("train.amp.enabled=1", ["train.amp.enabled", "1", "a boolean"]),
    ("model.backbone.bottom_up.freeze_at=x", ["freeze_at", "'x'", "an integer"]),  # a default
])
def test_override_of_the_wrong_type(train_net, capsys, tmp_path, override, expected):
    out = tmp_path / "out"
    line = _cli(train_net, capsys, "--config-file", train_net.config,
                f"train.output_dir={out}", override)
    for text in expected:
        assert text in line, line
    assert not out.exists()


def test_flags_after_the_overrides(train_net):
    from d2kd.engine import default_argument_parser, parse_command_line

    args = parse_command_line(default_argument_parser(), [
        "--config-file", "c.py", "train.max_iter=5", "--eval-only", "--num-gpus", "2",
        "optimizer.lr=0.1", "--resume"])
    assert args.eval_only and args.resume and args.num_gpus == 2
    assert args.opts == ["train.max_iter=5", "optimizer.lr=0.1"]


def test_help_shows_d2kd_examples(train_net, capsys):
    with pytest.raises(SystemExit):
        train_net.module.cli(["--help"])
    text = capsys.readouterr().out
    assert "MODEL.WEIGHTS" not in text and "cfg.yaml" not in text
    assert "configs/" in text and "train.init_checkpoint=" in text


# ------------------------------------------------------------------------------ teacher side


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory):
    """A checkpoint that fits the teacher of KD_CONFIG (random weights)."""
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(KD_CONFIG)
    path = str(tmp_path_factory.mktemp("teacher") / "teacher.pth")
    torch.save({"model": instantiate(cfg.model.teacher.model).state_dict()}, path)
    return path


def _teacher_cases(tmp_path, teacher_weights):
    wrong = tmp_path / "wrong.pth"
    torch.save({"model": {"backbone.weight": torch.zeros(3)}}, wrong)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(open(teacher_weights, "rb").read()[:4096])
    missing = str(tmp_path / "nope" / "model_final.pth")
    return [
        ((f"model.teacher.weights={missing}",), [missing, "model.teacher.weights", "does not exist"]),
        ((f"model.teacher.weights={missing}", "model.teacher.allow_uninitialized=True"),
         ["model.teacher.weights=''", "allow_uninitialized"]),
        ((f"model.teacher.weights={truncated}",), [str(truncated), "cannot read teacher"]),
        ((f"model.teacher.weights={wrong}",), [str(wrong), "does not fit", "missing keys"]),
        ((f"model.teacher.weights={teacher_weights}", "model.student.roi_heads.num_classes=5"),
         ["class counts differ", "12", "5"]),
    ]


def test_teacher_problems_stop_before_launch(train_net, capsys, tmp_path, teacher_weights):
    for overrides, expected in _teacher_cases(tmp_path, teacher_weights):
        out = tmp_path / "out"
        line = _cli(train_net, capsys, "--config-file", KD_CONFIG, *KD_TINY,
                    f"train.output_dir={out}", *overrides)
        for text in expected:
            assert text in line, (overrides, line)
        assert not out.exists()


def test_unikd_ake_checkpoint_missing(train_net, capsys, tmp_path):
    out = tmp_path / "out"
    config = os.path.join(ROOT, "configs/unikd/frcnn_R50_to_frcnn_R18_builtin.py")
    line = _cli(train_net, capsys, "--config-file", config, *KD_TINY, f"train.output_dir={out}",
                "model.teacher.weights=", "model.teacher.allow_uninitialized=True")
    assert "weights" in line and "does not exist" in line and "stage-1" in line, line
    assert not out.exists()


def test_offline_store_missing(train_net, capsys, tmp_path):
    out = tmp_path / "out"
    store = str(tmp_path / "no_store")
    config = os.path.join(ROOT, "configs/kd_detr/dino_to_frcnn_offline_builtin.py")
    line = _cli(train_net, capsys, "--config-file", config, *KD_TINY, f"train.output_dir={out}",
                "model.teacher.weights=", "model.teacher.allow_uninitialized=True",
                f"model.teacher.store={store}", f"dataloader.train.store={store}")
    assert store in line, line
    assert not out.exists()


# ------------------------------------------------------------------------------ data


def _register(tmp_path, name, images, annotations):
    import json

    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({
        "images": images, "annotations": annotations,
        "categories": [{"id": i + 1, "name": f"c{i}"} for i in range(12)]}))
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, str(path), str(tmp_path))
    return name


def _png(path, size=(16, 16)):
    from PIL import Image

    Image.new("RGB", size).save(path)


def test_empty_image_is_named_before_launch(train_net, capsys, tmp_path):
    _png(tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    name = _register(tmp_path, "d2kd_test_empty_image", [
        {"id": 1, "file_name": "good.png", "width": 16, "height": 16},
        {"id": 2, "file_name": "empty.png", "width": 16, "height": 16}], [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25,
         "iscrowd": 0},
        {"id": 11, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25,
         "iscrowd": 0}])
    out = tmp_path / "out"
    line = _cli(train_net, capsys, "--config-file", train_net.config, *train_net.tiny,
                f"train.output_dir={out}", f"dataloader.train.dataset.names={name}")
    assert "empty.png" in line and "0-byte" in line and name in line, line
    assert not out.exists()


def test_bad_boxes_are_dropped_with_one_warning(tmp_path, caplog):
    from detectron2.data import DatasetCatalog

    from d2kd.data.validation import drop_bad_boxes

    _png(tmp_path / "a.png")
    name = _register(tmp_path, "d2kd_test_bad_boxes", [
        {"id": 1, "file_name": "a.png", "width": 16, "height": 16}], [
        {"id": 20, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25,
         "iscrowd": 0},
        {"id": 21, "image_id": 1, "category_id": 1, "bbox": [3, 3, 0, 4], "area": 0,
         "iscrowd": 0},   # zero width
        {"id": 22, "image_id": 1, "category_id": 1, "bbox": [3, 3, 4, -2], "area": 1,
         "iscrowd": 0},   # negative height
        {"id": 23, "image_id": 1, "category_id": 1, "bbox": [20, 20, 4, 4], "area": 16,
         "iscrowd": 0}])  # outside the image
    dicts = DatasetCatalog.get(name)
    with caplog.at_level("WARNING", logger="d2kd.data.validation"):
        kept, dropped = drop_bad_boxes(dicts, name)
    assert dropped == 3 and len(kept[0]["annotations"]) == 1
    assert kept[0]["annotations"][0]["bbox"] == [1, 1, 5, 5]
    assert len(dicts[0]["annotations"]) == 4  # the data set's own dicts are untouched
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "dropped 3 of 4 boxes" in warnings[0].getMessage()


def test_show_dataset_drops_bad_boxes_and_says_so(tmp_path, capsys, caplog):
    import numpy as np
    from PIL import Image

    from d2kd.tools import show_dataset

    _png(tmp_path / "a.png")
    name = _register(tmp_path, "d2kd_test_show_bad_boxes", [
        {"id": 1, "file_name": "a.png", "width": 16, "height": 16}], [
        {"id": 30, "image_id": 1, "category_id": 2, "bbox": [1, 1, 5, 5], "area": 25,
         "iscrowd": 0},
        {"id": 31, "image_id": 1, "category_id": 1, "bbox": [3, 3, 0, 4], "area": 0,
         "iscrowd": 0},   # zero width: PIL refused to draw it
        {"id": 32, "image_id": 1, "category_id": 1, "bbox": [3, 3, 4, -2], "area": 1,
         "iscrowd": 0}])  # negative height
    out = tmp_path / "grid.png"
    with caplog.at_level("WARNING", logger="d2kd.data.validation"):
        assert show_dataset.main(["--dataset", name, "--out", str(out), "--scale", "1",
                                  "--cols", "1"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "dropped 2 of 3 boxes" in warnings[0], warnings
    assert "annotation #1 of" in warnings[0] and "has width 0" in warnings[0], warnings[0]
    stats = capsys.readouterr().out
    assert "dropped boxes 2" in stats and "objects 1," in stats, stats
    # the kept box [1, 1, 6, 6] of class c1 (category id 2) is drawn: its left edge
    pixels = np.asarray(Image.open(out).convert("RGB"))
    assert pixels.shape == (16, 16, 3)
    assert (pixels[1:6, 1] == show_dataset._palette(12)[1]).all(), pixels[1:6, 1]
