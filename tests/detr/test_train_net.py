"""DETR configs run through train_net.py: a few training iterations, then --eval-only."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_DATA = [
    "dataloader.train.dataset.names=d2kd_shapes_tiny_train",
    "dataloader.test.dataset.names=d2kd_shapes_tiny_val",
]


def _train_net(*args, timeout=600):
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_train_then_eval_only(tmp_path):
    config = os.path.join(ROOT, "configs", "detr", "dino_R18_builtin.py")
    out = str(tmp_path / "run")
    _train_net("--config-file", config, *TINY_DATA, "train.max_iter=3", "train.eval_period=0",
               "train.log_period=1", f"train.output_dir={out}", "train.checkpointer.period=3")
    weights = os.path.join(out, "model_final.pth")
    assert os.path.isfile(weights)
    log = _train_net("--config-file", config, "--eval-only", *TINY_DATA, f"train.init_checkpoint={weights}",
                     f"train.output_dir={tmp_path / 'eval'}")
    # detectron2's print_csv_format: a table whose header starts with AP, AP50, AP75
    assert "copypaste: AP,AP50,AP75" in log, log[-3000:]
