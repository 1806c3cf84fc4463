"""`dvdp-hr {train,plan,export,sample,make-shards,demo}`: parse -> config -> run.

Exit codes: 0 done, 2 bad config or input, 75 checkpointed after SIGTERM/SIGUSR1/SIGUSR2 (requeue).
"""
from __future__ import annotations

import argparse
import os
import sys

from dvdp_hr.distributed.checkpoint import CheckpointError
from dvdp_hr.export import ExportError
from dvdp_hr.train.confutil import ConfigError

CONFIG_ERROR_EXIT = 2


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML preset (configs/*.yaml); defaults to RUN/config.yaml when resuming")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.zero_stage=3")


def _load(args, run_dir: str | None = None):
    from dvdp_hr.train.config import load_config

    path = args.config
    if path is None and run_dir and os.path.isfile(os.path.join(run_dir, "config.yaml")):
        path = os.path.join(run_dir, "config.yaml")
    if path is None:
        raise ConfigError("--config is required (e.g. --config configs/tiny_cpu.yaml).")
    extra = list(args.overrides)
    for flag, key in (("shards", "data.shards"), ("max_images", "train.max_images"),
                      ("checkpoint_every", "checkpoint.every_images")):
        value = getattr(args, flag, None)
        if value is not None:
            extra.append(f"{key}={value}")
    return load_config(path, extra)


def cmd_train(args) -> int:
    cfg = _load(args, args.run_dir)
    if args.dry_run:
        return _print_plan(cfg, with_config=True)
    if not args.run_dir:
        raise ConfigError("--run-dir is required to train (checkpoints, logs and samples go there).")
    from dvdp_hr.train.loop import train

    os.makedirs(args.run_dir, exist_ok=True)
    return train(cfg, args.run_dir)


def _print_plan(cfg, with_config: bool) -> int:
    from dvdp_hr.train.plan import format_plan
    from dvdp_hr.train.validate import build_schedule, check_shard_count

    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
    schedule = build_schedule(cfg)
    if cfg.data.shards:  # a plan without --shards (README step 2) has nothing to count yet
        check_shard_count(cfg, schedule, world)
    if with_config:
        print("# Resolved config\n" + cfg.to_yaml())
    print(format_plan(cfg, schedule, world))
    return 0


def cmd_plan(args) -> int:
    return _print_plan(_load(args), with_config=False)


def cmd_export(args) -> int:
    from dvdp_hr.export import export

    info = export(args.run_dir, args.out, tag=args.checkpoint, raw=args.raw, decay=args.ema_decay)
    print(f"wrote {args.out} ({', '.join(s['weights'] + ' of ' + s['tag'] for s in info['sources'])})")
    return 0


def cmd_sample(args) -> int:
    from dvdp_hr.train.samples import sample_grid

    path = sample_grid(args.model, args.out, count=args.count, seed_start=args.seed_start, steps=args.steps,
                       method=args.method, checkpoint=args.checkpoint)
    print(f"wrote {path}")
    return 0


def cmd_demo(args) -> int:
    from dvdp_hr.train.demo import run_demo

    return run_demo(args.run_dir, max_images=args.max_images)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dvdp-hr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train or resume (rerun the same command to resume)")
    _config_args(p)
    p.add_argument("--run-dir")
    p.add_argument("--shards", help="make_shards output folder, or URL pattern with {res}")
    p.add_argument("--max-images", type=int)
    p.add_argument("--checkpoint-every", type=int, help="images between checkpoints")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and per-stage plan")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("plan", help="print the per-stage plan of a config")
    _config_args(p)
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("export", help="consolidate a run's weights into one safetensors file")
    p.add_argument("--run-dir", action="append", required=True, help="repeat to combine per-stage runs")
    p.add_argument("--checkpoint", help="checkpoint tag (default: latest)")
    p.add_argument("--raw", action="store_true", help="raw (ZeRO-consolidated) weights instead of EMA")
    p.add_argument("--ema-decay", type=float, help="which EMA (default: the first in ema.decays)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("sample", help="PNG grid from an export file or a run directory",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="model.safetensors or RUN dir")
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--seed-start", type=int, default=0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--method", choices=("ddim", "ancestral"), default="ddim")
    p.add_argument("--checkpoint", help="tag, when --model is a run dir")
    p.set_defaults(func=cmd_sample)
    sub.add_parser("make-shards", help="data_tools/make_shards.py (same arguments; see make-shards --help)")
    p = sub.add_parser("demo", help="tiny end-to-end run on CPU: images -> shards -> train -> samples")
    p.add_argument("--run-dir", default="runs/demo")
    p.add_argument("--max-images", type=int, default=6000)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["make-shards"]:  # every flag (--help too) belongs to make_shards itself
        from data_tools.make_shards import main as make_shards_main

        return make_shards_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ExportError, CheckpointError) as err:
        print(f"dvdp-hr {args.command}: error: {err}", file=sys.stderr)
        return CONFIG_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
