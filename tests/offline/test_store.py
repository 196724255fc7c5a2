"""The knowledge store on its own (d2kd/offline/store.py, identity.py): round trip, fp16, memory
maps, checksums, missing and corrupt shards, crash + resume, identity differences."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from d2kd.offline.data import check_dataset
from d2kd.offline.identity import dataset_identity, describe_differences
from d2kd.offline.store import (
    KnowledgeStore,
    KnowledgeStoreError,
    StoreCorruptError,
    StoreMismatchError,
    StoreMissingError,
    StoreWriter,
    image_key,
)

NUM_IMAGES, NUM_VIEWS, SHARD = 5, 2, 3  # 10 items in 4 shards (the last one short)


def _item(k: int):
    """Deterministic knowledge of plan item k: every kind of tensor the store handles."""
    g = torch.Generator().manual_seed(k)
    rows = 1 + k % 3  # dim 0 varies between images
    return {
        "m1": {"z": torch.randn(4, 6, generator=g) * 3, "mask": torch.rand(4, generator=g) > 0.5,
               "idx": torch.randint(-5, 10**12, (rows,), generator=g), "score": torch.tensor(0.1 * k)},
        "m2": {"boxes": torch.rand(rows, 4, generator=g, dtype=torch.float64)},
    }


def _header(float_dtype="float16", num_images=NUM_IMAGES, shard=SHARD):
    return {"identity": {"teacher": {"weights": {"sha256": "t"}}, "dataset": {"num_images": num_images},
                         "methods": {}, "views": {"image_format": "BGR", "views": []}},
            "plan": {"num_images": num_images, "num_views": NUM_VIEWS, "num_items": num_images * NUM_VIEWS,
                     "shard_size": shard},
            "float_dtype": float_dtype}


def _records(writer, shard):
    return [(100 + k // NUM_VIEWS, k % NUM_VIEWS) for k in writer.shard_items(shard)]


def _write(root, float_dtype="float16", resume=False, shards=None):
    writer = StoreWriter(str(root), _header(float_dtype), resume=resume)
    for s in writer.pending_shards() if shards is None else shards:
        writer.write_shard(s, _records(writer, s), [_item(k) for k in writer.shard_items(s)])
    return writer


def _digests(root):
    with open(os.path.join(root, "index.json")) as f:
        return {s: {n: i["sha256"] for n, i in e["files"].items()} for s, e in json.load(f)["shards"].items()}


@pytest.mark.parametrize("float_dtype", ["float16", "float32"])
def test_round_trip(tmp_path, float_dtype):
    _write(tmp_path, float_dtype)
    store = KnowledgeStore(str(tmp_path))
    assert store.plan["num_shards"] == 4
    for k in range(NUM_IMAGES * NUM_VIEWS):
        got, ref = store.read(100 + k // NUM_VIEWS, k % NUM_VIEWS), _item(k)
        assert set(got) == {"m1", "m2"}
        for m in ref:
            for key, t in ref[m].items():
                g = got[m][key]
                assert g.dtype == t.dtype and g.shape == t.shape, (m, key)
                if t.is_floating_point():
                    # rounded through the storage dtype, returned in the exported dtype
                    assert torch.equal(g, t.to(getattr(torch, float_dtype)).to(t.dtype)), (m, key)
                else:
                    assert torch.equal(g, t), (m, key)  # integers and bools are exact
    z = store.read(101, 1)["m1"]["z"]
    z += 1  # a copy: writable, the store is untouched
    assert torch.equal(store.read(101, 1)["m1"]["z"], _item(3)["m1"]["z"].to(getattr(torch, float_dtype)).float())
    arrays = store._shard(0)
    assert all(isinstance(a, np.memmap) for a in arrays.values())  # memory-mapped, not loaded
    assert arrays["m1.z.npy"].dtype == np.dtype(float_dtype) and arrays["m1.idx.npy"].dtype == np.int64
    schema = store.schema
    assert schema["m1"]["z"] == {"dtype": float_dtype, "source_dtype": "float32", "shape": [6], "scalar": False}
    assert schema["m1"]["score"]["scalar"] and schema["m2"]["boxes"]["source_dtype"] == "float64"
    per_item = store.bytes_per_item()
    assert set(per_item) == {"m1", "m2", "records"} and per_item["m1"] > 4 * 6 * 2


def test_float16_overflow_is_an_error(tmp_path):
    writer = StoreWriter(str(tmp_path), _header())
    items = [_item(k) for k in writer.shard_items(0)]
    items[1]["m1"]["z"][0, 0] = 1e6
    with pytest.raises(KnowledgeStoreError, match=r"m1\.z has values up to 1e\+06.*--float-dtype float32"):
        writer.write_shard(0, _records(writer, 0), items)


def test_keys_and_shapes_must_match_the_schema(tmp_path):
    writer = _write(tmp_path, shards=[0])
    items = [_item(k) for k in writer.shard_items(1)]
    items[0]["m1"]["z"] = torch.zeros(4, 7)
    with pytest.raises(KnowledgeStoreError, match=r"m1\.z is float32 \(4, 7\).*only dim 0 may vary"):
        writer.write_shard(1, _records(writer, 1), items)
    del items[0]["m1"]["z"]
    with pytest.raises(KnowledgeStoreError, match="same keys"):
        writer.write_shard(1, _records(writer, 1), items)


def test_corrupt_shard_fails_naming_the_file(tmp_path):
    _write(tmp_path)
    path = os.path.join(tmp_path, "shards", "000001", "m1.z.npy")
    with open(path, "r+b") as f:  # same size, one byte flipped
        f.seek(-3, os.SEEK_END)
        byte = f.read(1)
        f.seek(-3, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))
    store = KnowledgeStore(str(tmp_path))  # sizes are fine: opening works
    store.read(100, 0)  # shard 0 is intact
    with pytest.raises(StoreCorruptError, match=r"000001/m1\.z\.npy is corrupt: sha256"):
        store.read(101, 1)  # item 3 lives in shard 1: checked on first read
    with pytest.raises(StoreCorruptError, match=r"000001/m1\.z\.npy is corrupt"):
        KnowledgeStore(str(tmp_path), verify="eager")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 10)
    with pytest.raises(StoreCorruptError, match=r"000001/m1\.z\.npy has \d+ bytes, the index says"):
        KnowledgeStore(str(tmp_path))


def test_missing_shard_or_store_fails_naming_it(tmp_path):
    with pytest.raises(StoreMissingError, match="no knowledge store at .*dump_knowledge"):
        KnowledgeStore(str(tmp_path / "nowhere"))
    _write(tmp_path)
    os.remove(os.path.join(tmp_path, "shards", "000002", "m2.boxes.offsets.npy"))
    with pytest.raises(StoreMissingError, match=r"000002/m2\.boxes\.offsets\.npy is missing.*--resume"):
        KnowledgeStore(str(tmp_path))
    shutil.rmtree(os.path.join(tmp_path, "shards", "000002"))
    with pytest.raises(StoreMissingError, match=r"000002/\S+ is missing"):
        KnowledgeStore(str(tmp_path))
    index = os.path.join(tmp_path, "index.json")
    with open(index) as f:
        data = json.load(f)
    del data["shards"]["2"]
    with open(index, "w") as f:
        json.dump(data, f)
    with pytest.raises(StoreMissingError, match=r"incomplete: 1 of 4 shards were never written: .*000002"):
        KnowledgeStore(str(tmp_path))


def test_crash_then_resume_equals_an_uninterrupted_write(tmp_path, monkeypatch):
    _write(tmp_path / "ref")
    root = tmp_path / "crashed"
    calls = {"n": 0}
    real = StoreWriter.write_shard

    def dies_on_third(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed while writing shard 2
        return real(self, *args, **kwargs)

    monkeypatch.setattr(StoreWriter, "write_shard", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        _write(root)
    monkeypatch.setattr(StoreWriter, "write_shard", real)
    assert sorted(os.listdir(root / "shards")) == ["000000", "000001"]  # no temporary left
    with pytest.raises(StoreMissingError, match="incomplete: 2 of 4"):
        KnowledgeStore(str(root))
    with pytest.raises(KnowledgeStoreError, match="already holds a knowledge store.*--resume"):
        StoreWriter(str(root), _header())
    # What a SIGKILL can leave: a temporary folder, a shard renamed but never indexed; and a
    # listed shard corrupted since. Resume keeps shard 0, redoes 1, 2, 3.
    os.makedirs(root / "shards" / ".tmp-000002-999")
    shutil.copytree(root / "shards" / "000000", root / "shards" / "000003")
    with open(root / "shards" / "000001" / "m2.boxes.npy", "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    writer = StoreWriter(str(root), _header(), resume=True)
    assert writer.pending_shards() == [1, 2, 3]
    writer.close()  # one writer at a time (the store lock)
    _write(root, resume=True)
    assert _digests(root) == _digests(tmp_path / "ref")
    assert sorted(os.listdir(root / "shards")) == ["000000", "000001", "000002", "000003"]
    KnowledgeStore(str(root), verify="eager")


def test_resume_refuses_another_plan_or_identity(tmp_path):
    _write(tmp_path, shards=[0])
    with pytest.raises(StoreMismatchError, match=r"another plan:\n(.*\n)*  plan.shard_size: the store 3, this dump 4"):
        StoreWriter(str(tmp_path), _header(shard=4), resume=True)
    header = _header()
    header["identity"]["teacher"]["weights"]["sha256"] = "other"
    with pytest.raises(StoreMismatchError,
                       match=r"identity.teacher.weights.sha256: the store 't', this dump 'other'"):
        StoreWriter(str(tmp_path), header, resume=True)


def test_dataset_identity_and_lookup(tmp_path):
    dicts = [{"image_id": i, "file_name": f"/d/{i:06d}.png"} for i in range(100, 100 + NUM_IMAGES)]
    header = _header()
    header["identity"]["dataset"] = dataset_identity(dicts, ["train"])
    writer = StoreWriter(str(tmp_path), header)
    for s in writer.pending_shards():
        writer.write_shard(s, _records(writer, s), [_item(k) for k in writer.shard_items(s)])
    store = KnowledgeStore(str(tmp_path))
    check_dataset(store, dicts, ["train"])
    with pytest.raises(StoreMismatchError,
                       match=r"another data set \(\['train'\], 5 images\).*\(\['val'\], 4 images\)"):
        check_dataset(store, dicts[:4], ["val"])
    renamed = [dict(d, file_name="/d/x.png") if i == 2 else d for i, d in enumerate(dicts)]
    with pytest.raises(StoreMismatchError, match="dataset.ids_sha256"):
        check_dataset(store, renamed)
    with pytest.raises(StoreMismatchError, match="no knowledge for image 7 view 0"):
        store.read(7, 0)
    assert image_key(123) == 123 and image_key("123") != 123  # strings are hashed, digits or not
    assert image_key("img_a") == image_key("img_a") != image_key("img_b")


def test_describe_differences_names_paths():
    a = {"config_sha256": "x", "config": {"n": 1, "m": [1, 2]}, "weights": None}
    b = {"config_sha256": "y", "config": {"n": 2, "m": [1, 3]}, "weights": {"sha256": "s"}}
    lines = describe_differences(a, b, "teacher")
    assert "teacher.config.n: store 1, config 2" in lines and "teacher.config.m[1]: store 2, config 3" in lines
    assert any(line.startswith("teacher.weights: store null") for line in lines)
    assert describe_differences(a, dict(a), "teacher") == []
