#!/usr/bin/env python
"""Trains or evaluates any d2kd / detectron2 LazyConfig (detectors, DETRs, distillation runs).

    python train_net.py --config-file configs/baselines/faster_rcnn_R18_fpn_builtin.py
    python train_net.py --config-file CFG --num-gpus 2 train.max_iter=500   # 2 processes
    python train_net.py --config-file CFG --resume                          # continue a run
    python train_net.py --config-file CFG --eval-only train.init_checkpoint=out/model_final.pth
    python train_net.py --config-file CFG --slurm --nodes 2 --gpus-per-node 8 --partition p

The config provides ``model``, ``dataloader.{train,test,evaluator}``, ``optimizer``,
``lr_multiplier`` and ``train`` (configs/common/train.py). Without a GPU the run uses the CPU:
``--num-gpus N`` then starts N processes (gloo). Overrides are checked: an unknown key is an error
(``+key=value`` adds one). Checkpoints are written atomically; ``--resume`` continues from
``<train.output_dir>/last_checkpoint``. ``--slurm`` submits the same run through submitit and
requeues it with ``--resume`` on preemption or timeout (``--executor local`` runs it here).
"""
import logging
import os
import sys

import torch

from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, hooks, launch
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from d2kd.engine import (
    AtomicCheckpointer,
    D2KDUserError,
    GradientClipping,
    PeriodicCheckpointer,
    PreemptionHook,
    TrainingCurves,
    TrainingStateHook,
    build_evaluator,
    build_resumable_train_loader,
    build_test_loader,
    check_config,
    check_replicas_in_sync,
    ddp_kwargs,
    default_argument_parser,
    load_config,
    one_line,
    parse_command_line,
    preemption_deferred,
    preserve_rng,
    remove_partial_files,
    setup,
    setup_process,
    training_writers,
    use_amp,
)
from d2kd.engine import slurm

logger = logging.getLogger("detectron2")


def do_test(cfg, model):
    if "evaluator" in cfg.dataloader:
        ret = inference_on_dataset(model, build_test_loader(cfg), build_evaluator(cfg))
        print_csv_format(ret)
        return ret


def do_train(args, cfg):
    device = setup_process(cfg)
    if comm.is_main_process():
        remove_partial_files(cfg.train.output_dir)
    data = build_resumable_train_loader(cfg)  # first: a data problem fails before the model build
    model = instantiate(cfg.model)
    logger.info("Model:\n{}".format(model))
    model.to(device)

    # The optimizer sees model.parameters() only: a frozen teacher held outside them stays out.
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)

    ddp_model = create_ddp_model(model, **ddp_kwargs(cfg, device))
    trainer = (AMPTrainer if use_amp(cfg, device) else SimpleTrainer)(ddp_model, data.loader, optim)
    checkpointer = AtomicCheckpointer(ddp_model, cfg.train.output_dir, trainer=trainer)
    state = TrainingStateHook(model, data.sampler, data.batch_size, cfg.train.checkpointer.period)
    plot = cfg.train.get("plot", {}) or {}
    clip = cfg.train.get("clip_grad", {}) or {}
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            GradientClipping(clip["max_norm"], clip.get("norm_type", 2.0))
            if clip.get("enabled", False)
            else None,
            state,
            PreemptionHook(checkpointer, state) if preemption_deferred() else None,
            PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
            if comm.is_main_process()
            else None,
            # Evaluation leaves the random generators as it found them: a resumed run does not
            # repeat the evaluation of the iteration it starts after.
            hooks.EvalHook(cfg.train.eval_period, lambda: _neutral_test(cfg, ddp_model, model)),
            TrainingCurves(cfg.train.output_dir, plot.get("filename", "training_curves.png"),
                           plot.get("smoothing", 20))
            if comm.is_main_process() and plot.get("enabled", True)
            else None,
        ]
    )

    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    if args.resume and checkpointer.has_checkpoint():
        # The checkpoint stores the iteration that just finished: start at the next one.
        start_iter = trainer.iter + 1
    else:
        start_iter = 0
    if comm.is_main_process():
        # Writers last: they open metrics.json, which first loses the records of iterations
        # this run repeats (logged by a killed run after its checkpoint).
        trainer.register_hooks([hooks.PeriodicWriter(
            training_writers(cfg.train.output_dir, cfg.train.max_iter,
                             start_iter if args.resume else None),
            period=cfg.train.log_period)])
    trainer.train(start_iter, cfg.train.max_iter)
    check_replicas_in_sync(ddp_model)
    return trainer.storage.latest() if comm.is_main_process() else None


def _neutral_test(cfg, ddp_model, model):
    with preserve_rng(model):
        return do_test(cfg, ddp_model)


def main(args):
    try:
        result = _run(args)
        comm.synchronize()
        return result
    finally:
        # Tear the process group down before the interpreter exits: left to the interpreter's
        # teardown, gloo's threads sometimes abort a rank ("terminate called without an active
        # exception") after a successful run.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _run(args):
    cfg = setup(args)
    if args.eval_only:
        device = setup_process(cfg, eval_only=True)
        model = instantiate(cfg.model)
        model.to(device)
        model = create_ddp_model(model, **ddp_kwargs(cfg, device))
        AtomicCheckpointer(model, cfg.train.output_dir).resume_or_load(
            cfg.train.init_checkpoint, resume=args.resume
        )
        return do_test(cfg, model)
    return do_train(args, cfg)


def submit_to_slurm(args, cfg):
    """Submits this run as a Slurm job (or a local submitit job); returns the exit status."""
    job = slurm.submit(f"{os.path.abspath(__file__)}:main", args, cfg.train.output_dir)
    return slurm.wait(job) if args.wait else 0


def cli(argv=None):
    """Command-line entry: checks the config here, then launches processes or submits a job."""
    args = parse_command_line(default_argument_parser(), argv)
    try:
        # Fail fast, before processes are spawned or a job waits in a queue.
        cfg = load_config(args.config_file, args.opts)
        check_config(cfg, eval_only=args.eval_only, resume=args.resume, before_launch=True)
        if args.slurm:
            return submit_to_slurm(args, cfg)
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except D2KDUserError as e:
        print(f"train_net.py: error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
