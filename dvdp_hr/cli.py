"""`dvdp-hr {train,plan,export,sample,fid,ref-stats,swd,stage-metrics,make-shards,submit,demo}`: parse -> config -> run.

Exit codes: 0 done, 2 bad config or input, 75 checkpointed after SIGTERM/SIGUSR1/SIGUSR2 (requeue).
"""
from __future__ import annotations

import argparse
import os
import sys

from dvdp_hr.distributed.checkpoint import CheckpointError
from dvdp_hr.export import ExportError
from dvdp_hr.metrics.errors import EvaluationError
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
    if args.dry_run:
        return _print_plan(_load(args, args.run_dir), with_config=True)
    if not args.run_dir:
        raise ConfigError("--run-dir is required to train (checkpoints, logs and samples go there).")
    from dvdp_hr.distributed.status import Attempt

    os.makedirs(args.run_dir, exist_ok=True)
    # RUN/status.json: "running" now, then finished / requeue / failed (with the exception or exit code)
    with Attempt(args.run_dir) as attempt:
        cfg = _load(args, args.run_dir)
        from dvdp_hr.train.loop import train

        return attempt.done(train(cfg, args.run_dir, reshard=args.reshard))


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
    from dvdp_hr.sampling.run import SampleJob, run_sample

    seeds = args.seeds or f"{args.seed_start}-{args.seed_start + args.count - 1}"
    if args.outdir is None and args.seeds is None and args.count < 1:
        raise ConfigError("--count must be at least 1")
    return run_sample(SampleJob(
        model=args.model, seeds=seeds, outdir=args.outdir, out=args.out, batch=args.batch, steps=args.steps,
        method=args.method, eta=args.eta, precision=args.precision, shard_size=args.shards,
        checkpoint=args.checkpoint, device=args.device, progress_seconds=args.progress_seconds, grid=args.grid,
        variance_correction=args.variance_correction))


def cmd_fid(args) -> int:
    from dvdp_hr.metrics.evaluate import run_fid

    run_fid(args.images, args.ref, inception=args.inception, batch=args.batch, workers=args.workers,
            kid=not args.no_kid, kid_seed=args.kid_seed, out_json=args.json, device=args.device,
            resolution=args.resolution)
    return 0


def cmd_ref_stats(args) -> int:
    from dvdp_hr.metrics.evaluate import run_ref_stats

    run_ref_stats(args.shards, args.out, resolution=args.resolution, inception=args.inception, batch=args.batch,
                  workers=args.workers, kid=args.kid, device=args.device)
    return 0


def _swd_config(args):
    from dvdp_hr.metrics.swd import SWDConfig

    return SWDConfig(patch=args.patch, per_image=args.per_image, directions=args.directions, repeats=args.repeats,
                     min_resolution=args.min_resolution, seed=args.swd_seed)


def cmd_swd(args) -> int:
    from dvdp_hr.metrics.diagnose import run_swd

    run_swd(args.images, args.ref_images, args.count, _swd_config(args), batch=args.batch,
            resolution=args.resolution, out_json=args.json)
    return 0


def cmd_stage_metrics(args) -> int:
    from dvdp_hr.metrics.diagnose import run_stage_metrics

    run_stage_metrics(args.model, args.data, args.count, steps=args.steps, method=args.method, eta=args.eta,
                      batch=args.batch, precision=args.precision, device=args.device, cfg=_swd_config(args),
                      seed_start=args.seed_start, checkpoint=args.checkpoint, out_json=args.json)
    return 0


def _swd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=int, default=1000, help="images per side")
    p.add_argument("--patch", type=int, default=7, help="neighbourhood size (ProGAN: 7)")
    p.add_argument("--per-image", type=int, default=128, help="descriptors per image per level (ProGAN: 128)")
    p.add_argument("--directions", type=int, default=128, help="projections per repeat (ProGAN: 128)")
    p.add_argument("--repeats", type=int, default=4, help="ProGAN: 4 (512 projections in all)")
    p.add_argument("--min-resolution", type=int, default=16, help="coarsest pyramid level")
    p.add_argument("--swd-seed", type=int, default=0)
    p.add_argument("--json", help="also write the result here")


def _feature_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resolution", type=int, help="which set of a make_shards folder (default: the largest)")
    p.add_argument("--inception", help="inception-2015-12-05.pt (default: $DVDP_INCEPTION, then "
                                       "/tmp/inception-2015-12-05.pt)")
    p.add_argument("--batch", type=int, default=32, help="images per Inception call (32: clean-fid's batches)")
    p.add_argument("--workers", type=int, default=4, help="decode/resize processes per rank")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")


def cmd_demo(args) -> int:
    from dvdp_hr.demo.pipeline import run_demo

    try:
        return run_demo(args.run_dir, images=args.images, count=args.count, steps=args.steps,
                        inception=args.inception, nproc=args.nproc, train_photos=args.train_photos)
    except RuntimeError as exn:  # a missing extra, a failed training arm: the message names the fix
        print(f"dvdp-hr demo: error: {exn}", file=sys.stderr)
        return 1


def cmd_submit(args) -> int:
    from dvdp_hr.launch.submit import cmd_submit as submit

    return submit(args)


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
    p.add_argument("--reshard", action="store_true",
                   help="resume a checkpoint written on another number of ranks (not exact: weights, optimizer "
                        "state and EMA are kept, the data streams restart)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("plan", help="print the per-stage plan of a config")
    _config_args(p)
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("export", help="consolidate a run's weights into one safetensors file")
    p.add_argument("--run-dir", action="append", required=True, help="repeat to combine per-stage runs")
    p.add_argument("--checkpoint", help="checkpoint tag (default: latest)")
    p.add_argument("--raw", action="store_true", help="raw (ZeRO-consolidated) weights instead of EMA")
    p.add_argument("--ema-decay", help="which EMA: a decay (0.9999) or a half-life label (hl500000); "
                                       "default: the run's first")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("sample", help="PNG per seed into a folder (all ranks, resumable), or one PNG grid",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Folder mode (--outdir): one PNG per seed (seedNNNNNN.png) drawn by every rank of "
                                   "torchrun/srun/submitit; rerun the same command to complete a killed run. Grid mode "
                                   "(--out): one PNG grid. Image i depends on seed i only (any GPU count).")
    p.add_argument("--model", required=True, help="model.safetensors or RUN dir")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--outdir", help="folder for seedNNNNNN.png (+ samples.json, optional shards)")
    where.add_argument("--out", help="one PNG grid")
    p.add_argument("--seeds", help="e.g. 0-49999 or 0-9,20 (default for a grid: --seed-start, --count)")
    p.add_argument("--count", type=int, default=16, help="grid images (without --seeds)")
    p.add_argument("--seed-start", type=int, default=0)
    p.add_argument("--batch", type=int, help="images per denoiser call (default: by resolution, 8 at 1024 in bf16)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--method", choices=("ddim", "ancestral"), default="ddim")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (ancestral is eta=1)")
    p.add_argument("--grid", help="step grid: uniform or logsnr (default: the model's schedule.sampling_grid), "
                                  "or descending times such as 1000,750,500,250,0 (then --steps is ignored)")
    p.add_argument("--variance-correction", choices=("auto", "on", "off"), default="off",
                   help="short-ramp variance correction (dvdp-math.md s7) with the band variances of the "
                        "model's config (schedule.band_stats.sigma_perp2); auto: on when the config has them. "
                        "Off by default: best on the Gaussian oracle, but worse on trained models so far "
                        "(bench/results/schedule_ab.md)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="denoiser autocast (the sampler state stays fp32); auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--shards", type=int, default=0, metavar="N",
                   help="pack every N seeds into shard-NNNNNN.tar once drawn (and remove those PNGs); 0: PNGs only")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument("--progress-seconds", type=float, default=30.0, help="seconds between progress lines")
    p.add_argument("--checkpoint", help="tag, when --model is a run dir")
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("fid", help="FID (and KID) of a sample folder or shards vs reference stats, on all ranks",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="clean-fid's clean-mode FID from float64 sums all-reduced over the ranks: the "
                                   "same score for any GPU count. KID when STATS_kid.npz lies beside --ref.")
    p.add_argument("--images", required=True,
                   help="dvdp-hr sample folder, image folder, tar shards, make_shards folder")
    p.add_argument("--ref", required=True, help="STATS.npz (mu, sigma: dvdp-hr ref-stats or clean-fid's)")
    p.add_argument("--no-kid", action="store_true", help="skip KID (it gathers every feature on rank 0)")
    p.add_argument("--kid-seed", type=int, default=0, help="numpy seed of KID's random subsets")
    p.add_argument("--json", help="also write the result here")
    _feature_args(p)
    p.set_defaults(func=cmd_fid)
    p = sub.add_parser("ref-stats", help="clean-fid-format reference statistics (mu, sigma) of a shard set",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--shards", required=True, help="make_shards folder (or any folder fid --images takes)")
    p.add_argument("--out", required=True, help="STATS.npz")
    p.add_argument("--kid", action="store_true", help="also STATS_kid.npz with every feature (KID reference)")
    _feature_args(p)
    p.set_defaults(func=cmd_ref_stats)
    p = sub.add_parser("swd", help="multi-scale sliced Wasserstein distance (ProGAN) of two image sources; no weights",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", required=True, help="sample folder, image folder, tar shards or make_shards folder")
    p.add_argument("--ref-images", required=True, help="the same kinds; the first --count images are used")
    p.add_argument("--resolution", type=int, help="which set of a make_shards folder (default: the largest)")
    p.add_argument("--batch", type=int, default=32)
    _swd_args(p)
    p.set_defaults(func=cmd_swd)
    p = sub.add_parser("stage-metrics", help="per-stage SWD: each stage's state as it ends vs the data at that stage",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="model.safetensors or RUN dir")
    p.add_argument("--data", required=True, help="make_shards folder (full-resolution set) or image folder")
    p.add_argument("--seed-start", type=int, default=0)
    p.add_argument("--batch", type=int, help="images per denoiser call (default: by resolution)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--method", choices=("ddim", "ancestral"), default="ddim")
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--checkpoint", help="tag, when --model is a run dir")
    _swd_args(p)
    p.set_defaults(func=cmd_stage_metrics)
    sub.add_parser("make-shards", help="data_tools/make_shards.py (same arguments; see make-shards --help)")
    p = sub.add_parser("submit", help="run train/sample/fid as a submitit job (Slurm when srun exists, else local), "
                                      "requeued on time-out and preemption",
                       description="dvdp-hr submit [--cluster C] [--launch KEY=VALUE ...] {train,sample,fid} ARGS...: "
                                   "the same ARGS as the command itself; the job is sized by the config's launch: "
                                   "section. Prints the job id and log paths.")
    p.add_argument("--cluster", choices=("auto", "slurm", "local"), default="auto",
                   help="auto: Slurm when srun is installed, else local processes")
    p.add_argument("--folder", help="submitit's logs and job files (default: RUN/submitit)")
    p.add_argument("--launch", action="append", default=[], metavar="KEY=VALUE",
                   help="launch-section override, e.g. --launch partition=gpu --launch nodes=2 (repeatable)")
    p.add_argument("--wait", action="store_true", help="block until the job ends and print its result")
    p.add_argument("what", choices=("train", "sample", "fid"), help="the dvdp-hr command to run in the job")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments (--config, --run-dir, key=value, ...)")
    p.set_defaults(func=cmd_submit)
    p = sub.add_parser("demo", help="DVDP vs fixed resolution on CPU, same training FLOPs: shards -> train both -> "
                                    "sample -> SWD, plots, summary table", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Trains DVDP (16 -> 32 -> 64 px) and a fixed-resolution 64 px baseline with the same "
                                   "network for the same training FLOPs (DeepSpeed, --nproc CPU processes) on crops of "
                                   "scikit-image's photographs, samples both, scores them against held-out crops and "
                                   "writes loss_curves.png, samples.png and summary.md into --run-dir (~7 min on 2 cores). "
                                   "Rerunning resumes the training and redoes sampling and scoring (~2 min). --images, "
                                   "--train-photos and --nproc are fixed per run directory; --count, --steps and "
                                   "--inception only change the evaluation (and overwrite its outputs).")
    p.add_argument("--run-dir", default="runs/demo", help="everything the demo writes")
    p.add_argument("--images", type=int, default=24000,
                   help="training images of the DVDP arm; the fixed arm gets the same training FLOPs")
    p.add_argument("--count", type=int, default=128, help="generated (and held-out reference) images per arm")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps when sampling")
    p.add_argument("--nproc", type=int, default=2, help="training processes (DeepSpeed ranks)")
    p.add_argument("--train-photos", type=int, default=2048, help="training images: random 64 px crops of the photos")
    p.add_argument("--inception", help="inception-2015-12-05.pt: adds FID/KID (also $DVDP_INCEPTION)")
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
    except (ConfigError, ExportError, CheckpointError, EvaluationError) as err:
        print(f"dvdp-hr {args.command}: error: {err}", file=sys.stderr)
        return CONFIG_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
