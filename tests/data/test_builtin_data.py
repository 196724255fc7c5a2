"""The built-in data sets on disk (d2kd.data.builtin): generation, reuse, atomicity, locking,
errors, registration, and the data configs end to end (loader + COCOEvaluator)."""
import itertools
import json
import multiprocessing
import os
import uuid

import pytest
import torch

import d2kd.data  # noqa: F401  registers the built-in data sets
from d2kd.data import builtin
from d2kd.data.builtin import TINY_SPEC, ensure_shapes, register_shapes, shapes_dir
from d2kd.data.shapes import CLASSES, ShapesSpec
from d2kd.engine.errors import DatasetError
from detectron2.data import DatasetCatalog, MetadataCatalog

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = ShapesSpec(num_train=6, num_val=3, image_size=64)


def _files(directory):
    out = {}
    for base, _, names in os.walk(directory):
        for n in names:
            path = os.path.join(base, n)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return ensure_shapes("d2kd_shapes_tiny", TINY_SPEC, root=str(tmp_path_factory.mktemp("a")))


@pytest.fixture
def registered(tmp_path, monkeypatch):
    """A fresh data set name under a fresh $DETECTRON2_DATASETS; unregistered afterwards."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    prefix = f"test_shapes_{uuid.uuid4().hex[:8]}"
    names = register_shapes(prefix, SMALL)
    yield prefix, names, tmp_path
    for n in names:
        DatasetCatalog.remove(n)
        MetadataCatalog.remove(n)


def test_generation_is_deterministic(tiny_dir, tmp_path):
    again = ensure_shapes("d2kd_shapes_tiny", TINY_SPEC, root=str(tmp_path))
    a, b = _files(tiny_dir), _files(again)
    assert len(a) == 64 + 32 + 3  # images, two annotation files, manifest
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]][:5]


def test_pycocotools_reads_it(tiny_dir):
    from pycocotools.coco import COCO

    for split, n in (("train", 64), ("val", 32)):
        coco = COCO(os.path.join(tiny_dir, "annotations", f"instances_{split}.json"))
        assert len(coco.getImgIds()) == n
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
        per_image = [len(coco.getAnnIds(imgIds=[i])) for i in coco.getImgIds()]
        assert max(per_image) <= 30
        for ann in coco.loadAnns(coco.getAnnIds()):
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128
            assert ann["area"] == w * h and ann["iscrowd"] == 0
            assert 1 <= ann["category_id"] <= len(CLASSES)
    train = json.load(open(os.path.join(tiny_dir, "annotations", "instances_train.json")))
    counts = {im["id"]: 0 for im in train["images"]}
    for ann in train["annotations"]:
        counts[ann["image_id"]] += 1
    assert min(counts.values()) == 0  # some images are empty


def test_reuse_does_not_rewrite(tiny_dir):
    manifest = os.path.join(tiny_dir, "manifest.json")
    before = os.stat(manifest).st_mtime_ns
    assert ensure_shapes("d2kd_shapes_tiny", TINY_SPEC, root=os.path.dirname(tiny_dir)) == \
        tiny_dir
    assert os.stat(manifest).st_mtime_ns == before


def test_crash_leaves_nothing_and_next_call_regenerates(registered, monkeypatch):
    prefix, (train, _), root = registered
    directory = shapes_dir(prefix, SMALL)
    real = builtin.make_image
    calls = []

    def crash(*args):
        calls.append(args)
        if len(calls) == 5:
            raise RuntimeError("simulated crash")
        return real(*args)

    monkeypatch.setattr(builtin, "make_image", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        DatasetCatalog.get(train)
    assert not os.path.exists(directory)
    assert [e for e in os.listdir(root) if ".tmp-" in e] == []  # cleaned up
    # A folder left by a killed process is neither used nor kept.
    os.makedirs(os.path.join(root, f".{os.path.basename(directory)}.tmp-999999", "train"))
    monkeypatch.setattr(builtin, "make_image", real)
    dicts = DatasetCatalog.get(train)
    assert len(dicts) == SMALL.num_train and os.path.isfile(os.path.join(directory,
                                                                          "manifest.json"))
    assert [e for e in os.listdir(root) if ".tmp-" in e] == []


def test_corrupt_json_names_the_file(registered):
    prefix, (train, val), _ = registered
    DatasetCatalog.get(train)
    json_file = MetadataCatalog.get(train).json_file
    with open(json_file, "r+b") as f:
        f.truncate(os.path.getsize(json_file) // 2)
    with pytest.raises(DatasetError) as e:
        DatasetCatalog.get(train)
    assert json_file in str(e.value) and "delete" in str(e.value)
    assert len(DatasetCatalog.get(val)) == SMALL.num_val  # the other split is fine


def test_missing_image_names_it(registered):
    prefix, (train, _), _ = registered
    dicts = DatasetCatalog.get(train)
    os.remove(dicts[2]["file_name"])
    with pytest.raises(DatasetError, match="000002.png"):
        DatasetCatalog.get(train)


def test_other_spec_is_regenerated_unknown_folder_is_refused(tmp_path):
    spec_a, spec_b = SMALL, ShapesSpec(num_train=4, num_val=2, image_size=64, seed=5)
    directory = ensure_shapes("x", spec_a, root=str(tmp_path))
    assert ensure_shapes("x", spec_b, root=str(tmp_path)) == directory
    manifest = json.load(open(os.path.join(directory, "manifest.json")))
    assert manifest["spec"]["seed"] == 5 and len(os.listdir(os.path.join(directory, "train"))) == 4
    os.remove(os.path.join(directory, "manifest.json"))
    with pytest.raises(DatasetError, match="no manifest.json"):
        ensure_shapes("x", spec_b, root=str(tmp_path))


def _generate_in_child(root, log):
    real = builtin._generate

    def logged(*args):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real(*args)

    builtin._generate = logged
    ensure_shapes("race", SMALL, root=root)


def test_concurrent_processes_generate_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    log = str(tmp_path / "log")
    procs = [ctx.Process(target=_generate_in_child, args=(str(tmp_path), log)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(open(log).read().split()) == 1
    assert builtin._is_current(shapes_dir("race", SMALL, str(tmp_path)), SMALL)


def test_registration():
    registered = DatasetCatalog.list()
    for name in ("d2kd_shapes_train", "d2kd_shapes_val", "d2kd_shapes_tiny_train",
                 "d2kd_shapes_tiny_val"):
        assert name in registered
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "coco" and meta.thing_classes == list(CLASSES)
        assert meta.json_file.endswith(".json") and os.path.basename(meta.image_root) in (
            "train", "val")
    assert register_shapes("d2kd_shapes", builtin.DEFAULT_SPEC) == ("d2kd_shapes_train",
                                                                    "d2kd_shapes_val")
    with pytest.raises(ValueError, match="another spec"):
        register_shapes("d2kd_shapes", ShapesSpec(seed=1))
    # detectron2 still lists the available names for a typo
    with pytest.raises(KeyError, match="d2kd_shapes_train"):
        DatasetCatalog.get("d2kd_shapes_trian")


def test_tiny_dicts_follow_detectron2_format(datasets_root):
    dicts = DatasetCatalog.get("d2kd_shapes_tiny_val")
    meta = MetadataCatalog.get("d2kd_shapes_tiny_val")
    root = os.environ["DETECTRON2_DATASETS"]  # paths follow the variable, set after import
    assert meta.json_file.startswith(root) and dicts[0]["file_name"].startswith(root)
    assert len(dicts) == 32
    from detectron2.structures import BoxMode

    for d in dicts:
        assert {"file_name", "height", "width", "image_id", "annotations"} <= d.keys()
        assert os.path.isfile(d["file_name"]) and d["height"] == d["width"] == 128
        for a in d["annotations"]:
            assert a["bbox_mode"] == BoxMode.XYWH_ABS and 0 <= a["category_id"] < 12


def test_builtin_config_loader_and_evaluator(datasets_root, tmp_path):
    """The config's loader yields batches; COCOEvaluator scores ground truth as AP 100."""
    from detectron2.config import LazyConfig, instantiate
    from detectron2.structures import Boxes, BoxMode, Instances

    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "common", "data", "builtin.py"))
    cfg.dataloader.train.dataset.names = "d2kd_shapes_tiny_train"
    cfg.dataloader.train.num_workers = 0
    batch = next(iter(instantiate(cfg.dataloader.train)))
    assert len(batch) == 4 and all(b["image"].shape == (3, 192, 192) for b in batch)
    assert all(len(b["instances"]) == len(b["instances"].gt_boxes) for b in batch)

    cfg.dataloader.train.mapper.augmentations = cfg.detr_train_augmentations
    for batch in itertools.islice(instantiate(cfg.dataloader.train), 3):
        for b in batch:
            assert 92 <= min(b["image"].shape[1:]) <= 192
            assert (b["instances"].gt_boxes.area() > 0).all()

    cfg.dataloader.test.dataset.names = "d2kd_shapes_tiny_val"
    cfg.dataloader.evaluator.output_dir = str(tmp_path)
    evaluator = instantiate(cfg.dataloader.evaluator)
    evaluator.reset()
    for d in DatasetCatalog.get("d2kd_shapes_tiny_val"):
        inst = Instances((d["height"], d["width"]))
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                 for a in d["annotations"]]
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.ones(len(boxes))
        inst.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]],
                                         dtype=torch.int64)
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0)


def test_coco_config_mirrors_detectron2():
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "common", "data", "coco.py"))
    assert cfg.dataloader.train.dataset.names == "coco_2017_train"
    assert cfg.dataloader.test.dataset.names == "coco_2017_val"
    assert cfg.dataloader.evaluator.dataset_name == "coco_2017_val"
    assert "coco_2017_train" in DatasetCatalog.list()
    from detectron2.config import instantiate

    augs = instantiate(cfg.detr_train_augmentations)
    assert len(augs) == 3
