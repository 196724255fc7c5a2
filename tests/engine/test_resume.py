"""Exact resume: a run interrupted after a checkpoint and resumed with --resume logs the same
losses and ends with the same weights as the uninterrupted run (bit-exact on CPU, in one process
and in 2 DDP processes over gloo), metrics.json holds each iteration once, and max_to_keep holds
across resumes."""
import json
import os
import subprocess
import sys

import pytest
import torch

from d2kd.engine.resume import ResumableSampler, capture_rng, restore_rng

MAX_ITER = 8
CRASH_AT = 4  # the run dies before iteration 4; its last checkpoint is that of iteration 2
DDP_MAX_ITER = 6  # 2 processes: 6 iterations, the same crash


class _Crash(RuntimeError):
    pass


def _run(train_net, out, *extra, resume=False):
    argv = ["--config-file", train_net.config, *train_net.tiny, f"train.output_dir={out}",
            f"train.max_iter={MAX_ITER}", "train.checkpointer.period=3", "train.eval_period=0",
            *extra]
    if resume:
        argv.insert(0, "--resume")
    return train_net.module.main(train_net.args(*argv))


def _records(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return [json.loads(line) for line in f if "total_loss" in line]


def _losses(out):
    return [{k: v for k, v in r.items() if k.startswith("loss") or k in ("total_loss", "lr",
                                                                              "iteration")}
            for r in _records(out)]


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def straight(train_net, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("straight"))
    _run(train_net, out)
    return out


def test_resumed_run_equals_the_uninterrupted_one(train_net, straight, tmp_path, monkeypatch):
    out = str(tmp_path / "interrupted")
    trainer_cls = train_net.module.SimpleTrainer

    class CrashingTrainer(trainer_cls):
        def run_step(self):
            if self.iter == CRASH_AT:
                raise _Crash("killed")
            super().run_step()

    monkeypatch.setattr(train_net.module, "SimpleTrainer", CrashingTrainer)
    with pytest.raises(_Crash):
        _run(train_net, out)
    monkeypatch.setattr(train_net.module, "SimpleTrainer", trainer_cls)
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_0000002.pth"
    assert [r["iteration"] for r in _records(out)] == [0, 1, 2, 3]  # 3 is repeated on resume

    _run(train_net, out, resume=True)

    # metrics.json: every iteration once, and the values of the uninterrupted run (the logged
    # losses are medians over 20 iterations: the window is restored too).
    assert [r["iteration"] for r in _records(out)] == list(range(MAX_ITER))
    assert _losses(out) == _losses(straight)
    expected, got = _weights(os.path.join(straight, "model_final.pth")), _weights(
        os.path.join(out, "model_final.pth"))
    assert expected.keys() == got.keys()
    for k in expected:
        assert torch.equal(expected[k], got[k]), k


def _ddp_run(train_net, out, crash_at=-1, resume=False):
    """train_net.py with --num-gpus 2 (CPU, gloo, 1 thread per process) through
    ``ddp_crash_driver.py``, whose ranks all raise before iteration ``crash_at`` (if >= 0)."""
    driver = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_crash_driver.py")
    argv = [sys.executable, driver, "--config-file", train_net.config, "--num-gpus", "2",
            "--dist-url", "auto", *(["--resume"] if resume else []), *train_net.tiny,
            f"train.output_dir={out}", f"train.max_iter={DDP_MAX_ITER}",
            "train.checkpointer.period=3", "train.eval_period=0"]
    env = dict(os.environ, D2KD_CRASH_AT=str(crash_at), OMP_NUM_THREADS="1")
    return subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env)


@pytest.mark.slow
def test_resumed_two_process_ddp_run_equals_the_uninterrupted_one(train_net, tmp_path):
    straight, out = str(tmp_path / "straight"), str(tmp_path / "interrupted")
    proc = _ddp_run(train_net, straight)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _ddp_run(train_net, out, crash_at=CRASH_AT)
    assert proc.returncode != 0 and f"killed before iteration {CRASH_AT}" in proc.stderr, (
        proc.stderr[-3000:])
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_0000002.pth"
    proc = _ddp_run(train_net, out, resume=True)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Bit-exact, as in one process (measured: losses and weights equal, largest difference 0).
    assert [r["iteration"] for r in _records(out)] == list(range(DDP_MAX_ITER))
    assert _losses(out) == _losses(straight)
    expected, got = _weights(os.path.join(straight, "model_final.pth")), _weights(
        os.path.join(out, "model_final.pth"))
    assert expected.keys() == got.keys()
    for k in expected:
        assert torch.equal(expected[k], got[k]), k


def test_max_to_keep_holds_across_resumes(train_net, tmp_path):
    out = str(tmp_path)
    keep = ("train.checkpointer.period=1", "train.checkpointer.max_to_keep=2")
    _run(train_net, out, *keep, "train.max_iter=3")
    assert sorted(f for f in os.listdir(out) if f.startswith("model_0")) == [
        "model_0000001.pth", "model_0000002.pth"]
    # A partial file of a killed write is removed when the next run starts.
    (tmp_path / ".tmp-model_0000009.pth.abc").write_bytes(b"partial")
    os.remove(os.path.join(out, "model_final.pth"))
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000002.pth")
    _run(train_net, out, *keep, "train.max_iter=5", resume=True)
    assert sorted(f for f in os.listdir(out) if f.startswith("model_0")) == [
        "model_0000003.pth", "model_0000004.pth"]
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]


def test_checkpoints_respect_the_umask(train_net, straight):
    mask = os.umask(0o022)
    os.umask(mask)
    mode = os.stat(os.path.join(straight, "model_final.pth")).st_mode & 0o777
    assert mode == 0o666 & ~mask


def test_sampler_skips_the_consumed_positions():
    from detectron2.data.samplers import TrainingSampler

    full = ResumableSampler(TrainingSampler(10, seed=3))
    head = [i for _, i in zip(range(25), iter(full))]
    resumed = ResumableSampler(TrainingSampler(10, seed=3), start=17)
    assert [i for _, i in zip(range(8), iter(resumed))] == head[17:]
    assert resumed.yielded == 8


def test_rng_state_round_trip_includes_module_generators():
    import random

    import numpy as np

    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    model[0].generator = torch.Generator().manual_seed(5)
    state = capture_rng(model)
    before = (random.random(), np.random.rand(), torch.rand(1).item(),
              torch.rand(1, generator=model[0].generator).item())
    restore_rng(state, model)
    after = (random.random(), np.random.rand(), torch.rand(1).item(),
             torch.rand(1, generator=model[0].generator).item())
    assert before == after
