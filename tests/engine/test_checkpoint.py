"""Atomic checkpoints: an interrupted write never damages the previous checkpoint or its tag;
unusable checkpoints give one clear error that names the file."""
import os

import pytest
import torch
from torch import nn

from d2kd.engine import checkpoint as ckpt_mod
from d2kd.engine.checkpoint import (
    AtomicCheckpointer,
    CheckpointError,
    check_checkpoint_file,
    check_resume_checkpoint,
)


def _checkpointer(tmp_path, seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    return model, AtomicCheckpointer(model, str(tmp_path))


def _tag(tmp_path):
    return (tmp_path / "last_checkpoint").read_text()


def _leftovers(tmp_path):
    return [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
@pytest.mark.parametrize("same_name", [False, True])
def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch, exc, same_name):
    model, checkpointer = _checkpointer(tmp_path)
    checkpointer.save("model_0000001", iteration=1)
    before = (tmp_path / "model_0000001.pth").read_bytes()
    with torch.no_grad():
        model.weight.add_(1.0)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")  # bytes reach the disk, then the job dies
        raise exc

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    name = "model_0000001" if same_name else "model_0000003"
    with pytest.raises(type(exc)):
        checkpointer.save(name, iteration=3)
    monkeypatch.undo()

    assert _tag(tmp_path) == "model_0000001.pth"
    assert (tmp_path / "model_0000001.pth").read_bytes() == before
    assert not (tmp_path / "model_0000003.pth").exists()
    assert _leftovers(tmp_path) == []
    fresh, reader = _checkpointer(tmp_path, seed=1)
    extra = reader.resume_or_load("", resume=True)
    assert extra["iteration"] == 1
    torch.testing.assert_close(fresh.weight, model.weight - 1.0)


def test_interrupted_tag_write_keeps_previous_tag(tmp_path, monkeypatch):
    _, checkpointer = _checkpointer(tmp_path)
    checkpointer.save("model_0000001")

    real_write = ckpt_mod._atomic_write

    def failing_text(path, write, mode="wb"):
        if os.path.basename(path) == "last_checkpoint":
            def half(f):
                f.write("model_00")
                raise SystemExit(144)  # what submitit's preemption handler raises
            return real_write(path, half, mode)
        return real_write(path, write, mode)

    monkeypatch.setattr(ckpt_mod, "_atomic_write", failing_text)
    with pytest.raises(SystemExit):
        checkpointer.save("model_0000003")
    assert _tag(tmp_path) == "model_0000001.pth"
    assert (tmp_path / "model_0000003.pth").exists()  # complete, just not tagged yet
    assert _leftovers(tmp_path) == []


def test_save_overwrites_atomically_and_loads(tmp_path):
    model, checkpointer = _checkpointer(tmp_path)
    checkpointer.save("model_final", iteration=9)
    checkpointer.save("model_final", iteration=10)
    assert check_resume_checkpoint(str(tmp_path)) == str(tmp_path / "model_final.pth")
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == 10


def test_truncated_checkpoint_is_named_on_resume(tmp_path):
    _, checkpointer = _checkpointer(tmp_path)
    checkpointer.save("model_0000004")
    path = tmp_path / "model_0000004.pth"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model_0000004.pth.*corrupt or truncated"):
        check_resume_checkpoint(str(tmp_path))
    _, reader = _checkpointer(tmp_path)
    with pytest.raises(CheckpointError, match="model_0000004.pth"):
        reader.resume_or_load("", resume=True)


def test_garbage_checkpoint_is_named(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"not a checkpoint at all")
    _, reader = _checkpointer(tmp_path / "out")
    with pytest.raises(CheckpointError, match="weights.pth"):
        reader.load(str(path))


def test_tag_naming_a_missing_file(tmp_path):
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(CheckpointError, match="last_checkpoint names 'model_0000009.pth'"):
        check_resume_checkpoint(str(tmp_path))
    _, reader = _checkpointer(tmp_path)
    with pytest.raises(CheckpointError, match="model_0000009.pth"):
        reader.resume_or_load("", resume=True)


def test_missing_and_remote_weights(tmp_path):
    with pytest.raises(CheckpointError, match="not found: '/nope.pth'"):
        check_checkpoint_file("/nope.pth")
    missing = str(tmp_path / "ImageNetPretrained" / "MSRA" / "R-50.pkl")
    with pytest.raises(CheckpointError) as e:
        check_checkpoint_file(missing, what="train.init_checkpoint")
    msg = str(e.value)
    url = "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl"
    assert missing in msg and url in msg
    with pytest.raises(CheckpointError, match="does not download"):
        check_checkpoint_file("detectron2://ImageNetPretrained/MSRA/R-50.pkl")
