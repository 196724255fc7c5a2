"""Slurm through submitit, run for real with submitit's local executor: a job preempted
mid-training (SIGUSR2, as Slurm sends it) is requeued with --resume and ends at max_iter."""
import json
import os
import re
import signal
import time

import pytest

from d2kd.engine import slurm


def test_checkpoint_requeues_the_same_run_with_resume(train_net):
    args = train_net.args("--config-file", train_net.config, "--slurm", "train.max_iter=3")
    job = slurm.SubmititJob(f"{train_net.path}:main", args)
    delayed = job.checkpoint()
    resumed = delayed.function
    assert isinstance(resumed, slurm.SubmititJob) and resumed.entry == job.entry
    assert resumed.args.resume is True and args.resume is False  # the original is untouched
    assert resumed.args.opts == args.opts


def test_resources(train_net):
    cpu = train_net.args("--config-file", train_net.config, "--slurm", "--executor", "local",
                         "--num-gpus", "2", "--gpus-per-node", "0")
    assert slurm.resources(cpu) == (2, 0)  # 2 CPU processes
    gpu = train_net.args("--config-file", train_net.config, "--slurm", "--gpus-per-node", "8",
                         "--nodes", "2")
    assert slurm.resources(gpu) == (8, 8)  # one task per GPU
    assert 20000 <= slurm.job_port("123_4") < 40000


def _task_pids(controller_pid):
    with open(f"/proc/{controller_pid}/task/{controller_pid}/children") as f:
        return [int(p) for p in f.read().split()]


@pytest.mark.slow
def test_preempted_job_resumes_and_finishes(train_net, tmp_path):
    out = str(tmp_path / "out")
    max_iter = 12
    args = train_net.args("--config-file", train_net.config, "--slurm", "--executor", "local",
                          "--timeout", "30", "--max-requeue", "3", *train_net.tiny,
                          f"train.output_dir={out}", f"train.max_iter={max_iter}",
                          "train.checkpointer.period=3", "train.eval_period=0")
    job = slurm.submit(f"{train_net.path}:main", args, out)
    tag = os.path.join(out, "last_checkpoint")
    deadline = time.time() + 240
    while not os.path.exists(tag):
        assert job.state == "RUNNING", job.stderr()
        assert time.time() < deadline, "no checkpoint written"
        time.sleep(0.1)
    # Preempt the task (not the local controller: it restarts the task when it exits with
    # submitit's requeue status).
    for pid in _task_pids(job._process.pid):
        os.kill(pid, signal.SIGUSR2)
    result = job.result()  # waits; raises if the job failed

    log = job.stdout()
    assert "resume=False" in log and "d2kd: requeuing with --resume" in log
    assert "resume=True" in log
    starts = [int(s) for s in re.findall(r"Starting training from iteration (\d+)", log)]
    assert starts[0] == 0 and len(starts) == 2 and 0 < starts[1] < max_iter, starts
    with open(os.path.join(out, "metrics.json")) as f:
        iterations = [json.loads(line)["iteration"] for line in f if "total_loss" in line]
    assert iterations[-1] == max_iter - 1
    # After the requeue, training went on from the checkpoint, not from scratch (the killed
    # run may have logged a few iterations past its last checkpoint: take the last occurrence).
    resumed_at = len(iterations) - 1 - iterations[::-1].index(starts[1])
    after = iterations[resumed_at:]
    assert after == list(range(starts[1], max_iter))
    assert result is not None and "total_loss" in result
    with open(tag) as f:
        assert f.read() == "model_final.pth"


@pytest.mark.slow
def test_preemption_mid_period_loses_no_iteration(train_net, tmp_path):
    """A signal between two periodic checkpoints: the iteration it interrupts is saved and the
    requeued job starts right after it (before: back to the last periodic checkpoint)."""
    out = str(tmp_path / "out")
    max_iter = 10
    args = train_net.args("--config-file", train_net.config, "--slurm", "--executor", "local",
                          "--timeout", "30", "--max-requeue", "3", *train_net.tiny,
                          f"train.output_dir={out}", f"train.max_iter={max_iter}",
                          "train.checkpointer.period=100", "train.eval_period=0")
    job = slurm.submit(f"{train_net.path}:main", args, out)
    metrics = os.path.join(out, "metrics.json")
    deadline = time.time() + 240
    while not (os.path.exists(metrics) and open(metrics).read().count("total_loss") >= 3):
        assert job.state == "RUNNING", job.stderr()
        assert time.time() < deadline, "training did not start"
        time.sleep(0.05)
    for pid in _task_pids(job._process.pid):
        os.kill(pid, signal.SIGUSR2)
    job.result()

    log = job.stdout()
    starts = [int(s) for s in re.findall(r"Starting training from iteration (\d+)", log)]
    saved = [int(s) for s in re.findall(r"Preempted: saved iteration (\d+)", log)]
    assert len(starts) == 2 and len(saved) == 1, log[-3000:]
    assert 2 <= saved[0] < max_iter - 1 and starts[1] == saved[0] + 1
    with open(metrics) as f:
        iterations = [json.loads(line)["iteration"] for line in f if "total_loss" in line]
    assert iterations == list(range(max_iter))  # each iteration once, none lost
