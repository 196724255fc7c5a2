"""Dumps a teacher's knowledge once, for offline distillation (d2kd.offline).

    python -m d2kd.tools.dump_knowledge --config-file configs/unikd/dino_to_frcnn_R18_offline_builtin.py
    python -m d2kd.tools.dump_knowledge --config-file CFG --output STORE --resume     # after a crash
    python -m d2kd.tools.dump_knowledge --config-file CFG --num-views 4 model.teacher.weights=t.pth
    python -m d2kd.tools.dump_knowledge --verify STORE                                # checksums only

The config is a distillation config (an online one, or its ``*_offline*`` twin, whose
``model.teacher.store`` is the default ``--output``); ``key=value`` overrides are checked as in
train_net.py. Every method of ``model.losses`` must support offline distillation. The teacher
runs on ``train.device`` (``--device`` overrides). At the end the store's size per image is
printed against dumping the teacher's full feature maps (UniKD, Tab. 4).
"""
import argparse
import logging
import sys

from d2kd.engine.errors import D2KDUserError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config-file", default="", metavar="FILE", help="distillation config")
    parser.add_argument("--output", default="", help="store directory (default: model.teacher.store)")
    parser.add_argument("--resume", action="store_true", help="finish an interrupted dump")
    parser.add_argument("--num-views", type=int, default=2, help="deterministic views per image (default 2)")
    parser.add_argument("--shard-size", type=int, default=256, help="items per shard (default 256)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per teacher step (default 1)")
    parser.add_argument("--float-dtype", default="float16", choices=("float16", "float32"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the random parts of the knowledge")
    parser.add_argument("--device", default=None, help="default: train.device of the config")
    parser.add_argument("--verify", metavar="STORE", default="",
                        help="check every checksum of an existing store and print its size table")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key=value config overrides")
    return parser.parse_args(argv)


def _print_table(store) -> None:
    from d2kd.offline.cost import cost_rows, format_table

    print(f"\nKnowledge store {store.root}: {store.plan['num_images']} images x {store.plan['num_views']} "
          f"views, {store.total_bytes() / 1e6:.1f} MB, float storage {store.header['float_dtype']}")
    print(format_table(cost_rows(store), store.plan["num_images"]))


def run(args) -> int:
    from d2kd.offline import KnowledgeStore

    if args.verify:
        store = KnowledgeStore(args.verify, verify="eager")
        print(f"{args.verify}: all {store.plan['num_shards']} shards verified")
        _print_table(store)
        return 0
    from omegaconf import OmegaConf

    from d2kd.engine.config import load_config, register_builtin_datasets
    from d2kd.offline.dump import dump_knowledge

    register_builtin_datasets()
    cfg = load_config(args.config_file, [o for o in args.opts if o != "--"])
    output = args.output or str(OmegaConf.select(cfg, "model.teacher.store", default="") or "")
    if not output:
        raise D2KDUserError("no --output given, and the config names no model.teacher.store")
    store = dump_knowledge(cfg, output, resume=args.resume, num_views=args.num_views,
                           shard_size=args.shard_size, batch_size=args.batch_size,
                           float_dtype=args.float_dtype, seed=args.seed, device=args.device,
                           command=["python", "-m", "d2kd.tools.dump_knowledge"] + list(sys.argv[1:]))
    _print_table(store)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    from detectron2.utils.logger import setup_logger

    setup_logger(name="d2kd", abbrev_name="d2kd")
    logging.getLogger("d2kd").setLevel(logging.INFO)
    from d2kd.meta_arch.teacher import TeacherCheckpointError

    try:
        return run(args)
    except (D2KDUserError, TeacherCheckpointError) as e:
        print(f"dump_knowledge: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
