"""Running ``train_net.py`` as a Slurm job through submitit, with requeue on preemption/timeout.

Flow (the ConvNeXt ``run_with_submitit.py`` pattern):

1. ``train_net.py --slurm ...`` checks the config here, then submits :class:`SubmititJob` with
   one task per GPU (``--nodes`` x ``--gpus-per-node``; on CPU, ``--num-gpus`` processes).
2. In each task, :meth:`SubmititJob.__call__` takes rank, local rank, node and world size from
   ``submitit.JobEnvironment`` and runs the training through detectron2's own per-process launch
   logic (``detectron2.engine.launch._distributed_worker``: process group, local group, device),
   with ``dist_url`` on the first node's host name and a port derived from the job id.
3. On preemption or timeout Slurm signals the tasks. The signal is deferred to the end of the
   current iteration (:mod:`d2kd.engine.preemption`), which is saved as a checkpoint; then
   submitit calls :meth:`SubmititJob.checkpoint`, which returns a ``DelayedSubmission`` of a copy
   of the job with ``--resume`` switched on, and requeues it. The requeued job resumes from that
   checkpoint, with the training state of :mod:`d2kd.engine.resume`: no iteration is lost.

``--executor local`` runs the same job with submitit's ``LocalExecutor`` on this machine (used by
the tests; also handy to try the requeue logic without a cluster).
"""
import argparse
import copy
import importlib.util
import logging
import os
import re
import shutil
import sys
from typing import Any, Callable, Optional

from .errors import D2KDUserError

logger = logging.getLogger(__name__)


def add_slurm_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the ``--slurm`` options to ``parser`` (detectron2's ``default_argument_parser``)."""
    g = parser.add_argument_group("Slurm (submitit)")
    g.add_argument("--slurm", action="store_true",
                   help="submit this run as a Slurm job (through submitit) instead of running it")
    g.add_argument("--executor", choices=("slurm", "local"), default="slurm",
                   help="'local': run the job with submitit's LocalExecutor on this machine")
    g.add_argument("--nodes", type=int, default=1, help="number of nodes")
    g.add_argument("--gpus-per-node", type=int, default=None,
                   help="GPUs (= tasks) per node; default: --num-gpus, or 0 on a CPU-only host")
    g.add_argument("--cpus-per-task", type=int, default=None, help="CPU cores per task")
    g.add_argument("--slurm-mem", type=float, default=None, help="memory per node, in GB")
    g.add_argument("--partition", default=None, help="Slurm partition")
    g.add_argument("--account", default=None, help="Slurm account")
    g.add_argument("--qos", default=None, help="Slurm QOS")
    g.add_argument("--constraint", default=None, help="Slurm constraint, e.g. volta32gb")
    g.add_argument("--comment", default=None, help="Slurm comment")
    g.add_argument("--timeout", type=int, default=72 * 60, help="time limit, in minutes")
    g.add_argument("--job-name", default="d2kd", help="Slurm job name")
    g.add_argument("--job-dir", default="",
                   help="submitit's folder (pickles, logs); default <train.output_dir>/submitit")
    g.add_argument("--max-requeue", type=int, default=20,
                   help="how many times a timed-out job may be requeued")
    g.add_argument("--wait", action="store_true", help="wait for the job and report how it ended")
    return parser


def load_entry(entry: str) -> Callable[..., Any]:
    """Loads ``"/path/to/script.py:function"`` (the script's ``__main__`` block does not run)."""
    path, _, name = entry.rpartition(":")
    spec = importlib.util.spec_from_file_location("d2kd_submitit_entry", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return getattr(module, name)


def job_port(job_id: str) -> int:
    """A TCP port in [20000, 40000) that every task of job ``job_id`` derives alike."""
    digits = re.sub(r"\D", "", str(job_id)) or "0"
    return 20000 + int(digits) % 20000


class SubmititJob:
    """The callable submitted to Slurm: one call per task.

    Args:
        entry: ``"<train_net.py path>:main"``; ``main(args)`` runs one process of the training.
        args: the parsed command line of ``train_net.py``.
    """

    def __init__(self, entry: str, args: argparse.Namespace):
        self.entry = entry
        self.args = args

    def __call__(self) -> Any:
        import submitit
        from detectron2.engine.launch import _distributed_worker

        env = submitit.JobEnvironment()
        args = copy.copy(self.args)
        args.slurm = False
        args.num_machines = env.num_nodes
        args.machine_rank = env.node
        args.num_gpus = env.num_tasks // env.num_nodes  # processes per node
        host = env.hostnames[0] if env.num_nodes > 1 else "127.0.0.1"
        args.dist_url = f"tcp://{host}:{job_port(env.job_id)}"
        print(f"d2kd job {env.job_id}: task {env.global_rank}/{env.num_tasks} (local rank "
              f"{env.local_rank}, node {env.node}/{env.num_nodes}), resume={args.resume}, "
              f"dist_url={args.dist_url}", flush=True)
        from .preemption import defer_preemption

        defer_preemption()
        main = load_entry(self.entry)
        if env.num_tasks == 1:
            return main(args)
        result = []
        _distributed_worker(env.local_rank, lambda a: result.append(main(a)), env.num_tasks,
                            args.num_gpus, env.node, args.dist_url, (args,))
        return result[0] if result else None

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit on preemption/timeout: the same job, resuming from its checkpoint."""
        import submitit

        resumed = copy.copy(self.args)
        resumed.resume = True
        print("d2kd: requeuing with --resume", flush=True)
        return submitit.helpers.DelayedSubmission(type(self)(self.entry, resumed))


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resources(args) -> tuple:
    """``(tasks_per_node, gpus_per_node)``: one task per GPU; ``--gpus-per-node 0`` (or no GPU
    with the local executor) runs ``--num-gpus`` CPU processes per node."""
    gpus = args.gpus_per_node
    if gpus is None:
        gpus = args.num_gpus if args.executor == "slurm" else min(args.num_gpus, _visible_gpus())
    tasks = gpus if gpus > 0 else max(1, args.num_gpus)
    return tasks, gpus


def make_executor(args, job_dir: str):
    """A submitit executor for ``args`` (Slurm, or local with ``--executor local``)."""
    import submitit

    if args.executor == "slurm" and shutil.which("sbatch") is None:
        raise D2KDUserError(
            "--slurm: no Slurm on this machine (sbatch not found); use --executor local to run "
            "the job through submitit here"
        )
    executor = submitit.AutoExecutor(
        folder=job_dir, cluster=args.executor,
        slurm_max_num_timeout=args.max_requeue, local_max_num_timeout=args.max_requeue,
    )
    tasks, gpus = resources(args)
    params = dict(
        name=args.job_name, timeout_min=int(args.timeout), nodes=args.nodes,
        gpus_per_node=gpus, tasks_per_node=tasks, cpus_per_task=args.cpus_per_task,
        mem_gb=args.slurm_mem, slurm_partition=args.partition, slurm_account=args.account,
        slurm_qos=args.qos, slurm_constraint=args.constraint, slurm_comment=args.comment,
        slurm_signal_delay_s=120,
    )
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def submit(entry: str, args: argparse.Namespace, output_dir: str):
    """Submits the run described by ``args``; returns the submitit job."""
    job_dir = args.job_dir or os.path.join(output_dir, "submitit")
    executor = make_executor(args, job_dir)
    job = executor.submit(SubmititJob(entry, args))
    print(f"Submitted job {job.job_id} ({args.executor}); submitit files and logs in {job_dir}; "
          f"training output in {output_dir}", flush=True)
    return job


def wait(job) -> int:
    """Waits for ``job``; prints the end of its log; returns 0 on success, 1 otherwise."""
    try:
        job.result()
        status = 0
    except Exception as e:  # submitit re-raises the job's failure
        print(f"job {job.job_id} failed: {e}", file=sys.stderr)
        status = 1
    out: Optional[str] = job.stdout()
    if out:
        print("\n".join(out.splitlines()[-20:]))
    return status
