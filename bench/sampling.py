"""Images/s of the sampling engine: the DVDP schedule vs fixed resolution, same network, same steps.

The fixed-resolution schedule is a DVDPSchedule with root_resolution == resolution (one stage); both
run the very same UNet module (a shared network; stage index 0 at fixed resolution) through
dvdp_hr.sampling.iter_batches (bf16 autocast on CUDA, per-image generators, uint8 output), with the
same DDIM step count. Runs alternate; the median of --repeats timed runs after a warm-up is reported.

    python bench/sampling.py --preset small                      # CPU: 64 -> 16, 50 steps
    python bench/sampling.py --device cuda --preset ffhq1024 --resolution 1024   # GPU (bench/gpu_check.sh)

Writes bench/results/sampling.<device>.{json,md} (command, machine, load average before and after).
"""
import argparse
import os
import pathlib
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import write_results  # noqa: E402
from dvdp_hr.diffusion import DVDPSchedule, cost_fraction  # noqa: E402
from dvdp_hr.models import ModelConfig, build_denoiser  # noqa: E402
from dvdp_hr.models.denoiser import Denoiser  # noqa: E402
from dvdp_hr.sampling import iter_batches  # noqa: E402
from dvdp_hr.sampling.engine import resolve_precision  # noqa: E402

# configs/ffhq1024.yaml's schedule (turning points from its band-statistics estimate)
FFHQ1024 = {"root": 64, "turning_points": "204,468,759,904", "beta_schedule": "cosine"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--root", type=int, help="root resolution (default: 16, or 64 at 1024)")
    p.add_argument("--turning-points", help="comma list (default: 300,600 for 64 px, FFHQ-1024's at 1024)")
    p.add_argument("--beta-schedule", help="linear or cosine (default: linear, cosine at 1024)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", default="auto", help="auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", help="results name (default: sampling.<device>)")
    p.add_argument("--results-dir", help="folder for NAME.json/.md (default: bench/results; $OUT on a GPU machine)")
    args = p.parse_args(argv)
    small = {"root": 16, "turning_points": "300,600", "beta_schedule": "linear"}  # configs/tiny_cpu.yaml's
    preset = FFHQ1024 if args.resolution == 1024 else small
    args.root = args.root or preset["root"]
    args.turning_points = args.turning_points or preset["turning_points"]
    args.beta_schedule = args.beta_schedule or preset["beta_schedule"]
    return args


def build(args, device):
    tps = [int(t) for t in args.turning_points.split(",")]
    dvdp = DVDPSchedule(args.resolution, args.root, tps, beta_schedule=args.beta_schedule)
    fixed = DVDPSchedule(args.resolution, args.resolution, [], beta_schedule=args.beta_schedule)
    cfg = ModelConfig(preset=args.preset, prediction="x0", attention="sdpa")
    model = build_denoiser(cfg, dvdp).to(device).eval()
    same_network = Denoiser(model.config, fixed, list(model.networks))  # stage 0's embedding at fixed resolution
    return {"dvdp": (model, dvdp), "fixed": (same_network, fixed)}


def timed_run(model, schedule, args, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in iter_batches(model, schedule, [list(range(args.batch))], steps=args.steps, method="ddim",
                          device=device, precision=args.precision):
        pass  # iter_batches returns uint8 on the host: the device work is done when it yields
    return time.perf_counter() - start


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.precision = resolve_precision(args.precision, device)
    load_before = os.getloadavg()
    runs = build(args, device)
    for name in runs:  # warm-up: kernels, allocator, autotuning
        timed_run(*runs[name], args, device)
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name in runs:
            times[name].append(timed_run(*runs[name], args, device))
    median = {n: statistics.median(t) for n, t in times.items()}
    ips = {n: args.batch / median[n] for n in runs}
    # each (dvdp, fixed) pair runs back to back: its ratio cancels load that changes between pairs
    pairs = [f / d for d, f in zip(times["dvdp"], times["fixed"])]
    speedup = statistics.median(pairs)
    dvdp = runs["dvdp"][1]
    payload = {"preset": args.preset, "resolution": args.resolution, "schedule": dvdp.to_dict(), "steps": args.steps,
               "batch": args.batch, "precision": args.precision, "repeats": args.repeats, "threads": args.threads,
               "seconds": times, "images_per_s": ips, "pair_speedups": pairs, "speedup": speedup,
               "cost_model_speedup": 1 / cost_fraction(dvdp, args.steps),
               "load_average_before": load_before, "load_average_after": os.getloadavg()}
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    payload["peak_gib"] = peak
    name = args.name or f"sampling.{device.type}"
    if args.results_dir:
        common.RESULTS = pathlib.Path(args.results_dir)
    write_results(name, payload, [
        "| sampler | images/s | median s per batch |", "|---|---|---|",
        f"| DVDP {args.resolution} -> {args.root}, turning points {dvdp.turning_points} | {ips['dvdp']:.3f} | "
        f"{median['dvdp']:.2f} |",
        f"| fixed {args.resolution} (same network) | {ips['fixed']:.3f} | {median['fixed']:.2f} |", "",
        f"Speedup {speedup:.2f}x, the median of back-to-back pairs {', '.join(f'{p:.2f}' for p in pairs)} "
        f"(cost model, denoiser pixels: {payload['cost_model_speedup']:.2f}x); "
        f"{args.preset} preset, {args.steps} DDIM steps, batch {args.batch}, precision {args.precision}.",
        f"Load average (1/5/15 min) before {tuple(round(v, 1) for v in load_before)}, after "
        f"{tuple(round(v, 1) for v in payload['load_average_after'])} on {os.cpu_count()} cores: other jobs shared the "
        "machine when the load exceeds the core count; compare the per-run seconds in the JSON."])
    print(f"dvdp {ips['dvdp']:.3f} img/s, fixed {ips['fixed']:.3f} img/s: {speedup:.2f}x (pairs) "
          f"(cost model {payload['cost_model_speedup']:.2f}x)")


if __name__ == "__main__":
    main()
