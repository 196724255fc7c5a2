"""train_net.py end to end on the tiny built-in data set with a tiny Faster R-CNN: training,
checkpoints, --resume, --eval-only, 2-process DDP on CPU, and bad input (one clear error each)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

def _metrics(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _run(train_net, *argv):
    return train_net.module.main(train_net.args(*argv))


def _checkpoint_iteration(path):
    return torch.load(path, map_location="cpu", weights_only=True)["trainer"]["iteration"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, train_net):
    """4 iterations, checkpoints every 2, evaluation at the end only."""
    from detectron2.utils import logger as d2_logger

    # detectron2 logs some tables (the class histogram) only the first n times per process:
    # earlier tests in this process must not hide them from this run's log.txt
    d2_logger._LOG_COUNTER.clear()
    out = str(tmp_path_factory.mktemp("run"))
    result = _run(
        train_net, "--config-file", train_net.config, *train_net.tiny, f"train.output_dir={out}",
        "train.max_iter=4", "train.checkpointer.period=2", "train.eval_period=0",
    )
    predictions = os.path.join(out, "inference", "coco_instances_results.json")
    saved = os.path.join(out, "final_predictions.json")
    shutil.copy(predictions, saved)
    return out, result


def test_training_writes_checkpoints_metrics_and_plot(trained):
    out, result = trained
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_final.pth"
    for name in ("model_0000001.pth", "model_0000003.pth", "model_final.pth"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert _checkpoint_iteration(os.path.join(out, "model_final.pth")) == 3
    records = _metrics(out)
    assert [r["iteration"] for r in records if "total_loss" in r] == [0, 1, 2, 3]
    assert any("bbox/AP" in r for r in records)
    assert os.path.getsize(os.path.join(out, "training_curves.png")) > 0
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]
    assert "bbox/AP" in result


def test_resume_continues_at_the_next_iteration(trained, train_net, tmp_path):
    out = str(tmp_path / "resumed")
    shutil.copytree(trained[0], out)
    # As if the job died after iteration 1: the tag names the first periodic checkpoint.
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")
    with open(os.path.join(out, "metrics.json"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in _metrics(trained[0]) if r["iteration"] <= 1)
    _run(train_net, "--config-file", train_net.config, "--resume", *train_net.tiny,
         f"train.output_dir={out}", "train.max_iter=4", "train.checkpointer.period=2",
         "train.eval_period=0")
    iterations = [r["iteration"] for r in _metrics(out) if "total_loss" in r]
    assert iterations == [0, 1, 2, 3]  # 2 and 3 come from the resumed run
    assert _checkpoint_iteration(os.path.join(out, "model_final.pth")) == 3


def test_eval_only_reproduces_the_final_evaluation(trained, train_net, tmp_path):
    out, result = trained
    ret = _run(train_net, "--config-file", train_net.config, "--eval-only", *train_net.tiny,
               f"train.output_dir={tmp_path}",
               f"train.init_checkpoint={os.path.join(out, 'model_final.pth')}")
    assert ret["bbox"]["AP"] == pytest.approx(result["bbox/AP"][0], abs=1e-9, nan_ok=True)
    with open(os.path.join(out, "final_predictions.json")) as f:
        expected = json.load(f)
    with open(tmp_path / "inference" / "coco_instances_results.json") as f:
        got = json.load(f)
    assert expected, "the tiny model made no detections: the comparison would be vacuous"
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-3)
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)


@pytest.mark.slow
def test_two_process_ddp_on_cpu(train_net, tmp_path):
    out = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, train_net.path, "--config-file", train_net.config, "--num-gpus", "2",
         "--dist-url", "auto", *train_net.tiny, f"train.output_dir={out}", "train.max_iter=3",
         "train.eval_period=0", "train.checkpointer.period=100"],
        capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = {}
    for name in ("log.txt", "log.txt.rank1"):
        with open(os.path.join(out, name)) as f:
            lines = [line for line in f if "Parameter digest of rank" in line]
        assert lines, name
        digests[name] = lines[-1].split()[-1]
    assert digests["log.txt"] == digests["log.txt.rank1"]
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    threads = max(1, len(os.sched_getaffinity(0)) // 2)  # cores shared by the 2 processes
    assert f"2 process(es) on this machine, 2 world size, {threads} CPU threads per" in log
    assert "Parameters are identical on all 2 ranks" in log


# ------------------------------------------------------------------------------------------
# Bad input: `train_net.py` prints one line naming the culprit and exits with status 2, before
# anything is built (except the corrupt JSON, found when the data set is first read).


@pytest.fixture
def cli_error(train_net, capsys):
    """Runs train_net's command line; returns its one error line (asserting status 2)."""

    def run(*argv):
        return _cli_error(train_net, capsys, *argv)

    return run


def _cli_error(train_net, capsys, *argv):
    status = train_net.module.cli(list(argv))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert status == 2, err[-2000:]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def test_unknown_override_key(cli_error, train_net, tmp_path):
    line = cli_error("--config-file", train_net.config, f"train.output_dir={tmp_path}",
                     "train.max_iterr=5")
    assert "train.max_iterr" in line and "did you mean 'train.max_iter'" in line


def test_missing_init_checkpoint(cli_error, train_net, tmp_path):
    line = cli_error("--config-file", train_net.config, f"train.output_dir={tmp_path}",
                     "train.init_checkpoint=/nope.pth")
    assert "/nope.pth" in line


def test_resume_with_a_bad_last_checkpoint(cli_error, train_net, tmp_path):
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    line = cli_error("--config-file", train_net.config, "--resume",
                     f"train.output_dir={tmp_path}")
    assert "model_0000009.pth" in line and "does not exist" in line
    (tmp_path / "model_0000009.pth").write_bytes(b"PK\x03\x04 truncated")
    line = cli_error("--config-file", train_net.config, "--resume",
                     f"train.output_dir={tmp_path}")
    assert str(tmp_path / "model_0000009.pth") in line and "truncated" in line


def test_unknown_dataset_name(cli_error, train_net, tmp_path):
    line = cli_error("--config-file", train_net.config, f"train.output_dir={tmp_path}",
                     "dataloader.train.dataset.names=nope")
    assert "'nope' is not registered" in line


def test_corrupt_dataset_json(cli_error, train_net, tmp_path):
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    bad = tmp_path / "instances_broken.json"
    bad.write_text('{"images": [{"id": 1, "file_name": "a.png"')
    name = "d2kd_test_corrupt_json"
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, str(bad), str(tmp_path))
    line = cli_error("--config-file", train_net.config, *train_net.tiny,
                     f"train.output_dir={tmp_path}", f"dataloader.train.dataset.names={name}",
                     "train.max_iter=1")
    assert name in line and str(bad) in line and "JSONDecodeError" in line


def test_log_file_has_no_colour_codes(trained):
    out, _ = trained
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert "Distribution of instances" in log  # detectron2 colours this table on a terminal
    assert "\x1b[" not in log
