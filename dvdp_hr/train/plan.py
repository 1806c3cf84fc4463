"""Per-stage training plan: which stage each optimizer step trains, batch sizes, and cost estimate."""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from dvdp_hr.train.stage_shares import compute_shares, logsnr_range_text, policy_weights


def step_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of the integers given (seed, step, rank, ...)."""
    digest = hashlib.sha256(":".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def stage_weights(cfg, schedule) -> dict[int, float]:
    """Sampling weight of each trained stage: configured, or by train.stage_weighting (dvdp-math.md s12)."""
    raw = cfg.train.stage_weights or policy_weights(cfg, schedule)
    chosen = {k: float(raw[k]) for k in cfg.trained_stages()}
    total = sum(chosen.values())
    return {k: w / total for k, w in chosen.items()}


def stage_for_step(seed: int, step: int, weights: dict[int, float]) -> int:
    """The stage trained at optimizer step `step`: identical on every rank and after resume."""
    stages = sorted(weights)
    return random.Random(step_seed(seed, step, 0x57A6E)).choices(stages, [weights[k] for k in stages])[0]


@dataclass
class StagePlan:
    stage: int
    resolution: int
    t_range: tuple[int, int]
    timestep_share: float
    weight: float
    micro_batch: int
    grad_accum: int
    global_batch: int
    pixel_fraction: float  # (r_k / r_0)^2, dvdp-math.md s8
    logsnr_range: str = ""  # pixel log-SNR the stage is trained on (dvdp-math.md s9)
    compute_share: float = 0.0  # of training denoiser pixels (dvdp-math.md s12)


def build_plan(cfg, schedule, world_size: int) -> list[StagePlan]:
    weights = stage_weights(cfg, schedule)
    share, compute = schedule.stage_probabilities(), compute_shares(cfg, schedule, weights)
    rows = []
    for k in range(schedule.num_stages):
        res = schedule.stage_resolution(k)
        micro, accum = cfg.train.micro_batch[k], cfg.train.grad_accum[k]
        rows.append(StagePlan(k, res, schedule.stage_bounds(k), share[k], weights.get(k, 0.0), micro, accum,
                              micro * accum * world_size, (res / schedule.resolution) ** 2,
                              logsnr_range_text(schedule, k), compute[k]))
    return rows


def expected_images_per_step(plan: list[StagePlan]) -> float:
    return sum(r.weight * r.global_batch for r in plan)


def gpu_hours_per_million(plan: list[StagePlan], throughput: dict) -> float | None:
    """Expected GPU-hours per 10^6 training images: images of stage k arrive in proportion to
    weight_k * global_batch_k, each costing 1 / throughput(r_k) GPU-seconds."""
    thr = {int(r): float(v) for r, v in throughput.items()}
    active = [r for r in plan if r.weight > 0]
    if not active or any(r.resolution not in thr for r in active):
        return None
    images = sum(r.weight * r.global_batch for r in active)
    seconds = sum(r.weight * r.global_batch / thr[r.resolution] for r in active) / images
    return seconds * 1e6 / 3600.0


def format_plan(cfg, schedule, world_size: int) -> str:
    from dvdp_hr.train.plan_memory import format_memory  # measures the network (cached) on first use

    plan = build_plan(cfg, schedule, world_size)
    thr = {int(r): v for r, v in cfg.plan.throughput_img_s.items()}
    images = expected_images_per_step(plan)
    lines = [f"Per-stage plan (world_size={world_size}: set WORLD_SIZE to plan another size; T={schedule.num_steps}, "
             f"turning points {schedule.turning_points}):",
             f"{'stage':>5} {'res':>5} {'t range':>12} {'log-SNR px':>13} {'t share':>8} {'weight':>7} {'micro':>6} "
             f"{'accum':>6} {'global':>7} {'img share':>9} {'cost share':>10} {'px frac':>8} {'img/s/GPU*':>10}"]
    for r in plan:
        lo, hi = r.t_range
        lines.append(f"{r.stage:>5} {r.resolution:>5} {f'({lo},{hi}]':>12} {r.logsnr_range:>13} "
                     f"{r.timestep_share:>8.3f} {r.weight:>7.3f} {r.micro_batch:>6} {r.grad_accum:>6} "
                     f"{r.global_batch:>7} {r.weight * r.global_batch / images:>9.3f} {r.compute_share:>10.3f} "
                     f"{r.pixel_fraction:>8.4f} {str(thr.get(r.resolution, '-')):>10}")
    lines.append(f"log-SNR px: the stage's log-SNR in its own pixel units, log(4^k abar/(1-abar)) at t = hi .. lo+1 "
                 f"({schedule.beta_schedule}, dvdp-math.md s9); t share: its share of timesteps; "
                 f"weight: probability that an optimizer step trains the stage (train.stage_weighting="
                 f"{cfg.train.stage_weighting if cfg.train.stage_weights is None else 'explicit stage_weights'}); "
                 "global: images per such step "
                 "(micro x accum x world); img share: fraction of training images at that stage; "
                 "cost share: fraction of training denoiser pixels; "
                 "px frac: (res / full res)^2; * img/s/GPU: plan.throughput_img_s, BORROWED figures "
                 f"[{cfg.plan.throughput_source or 'unlabelled'}].")
    cost = sum(r.weight * r.global_batch * r.pixel_fraction for r in plan) / images
    lines.append(f"Expected images per optimizer step: {images:.1f}; denoiser pixels per training image "
                 f"relative to a {schedule.resolution}px model: {cost:.3f} (dvdp-math.md s8)")
    hours = gpu_hours_per_million(plan, cfg.plan.throughput_img_s)
    if hours is not None:
        lines.append(f"Expected GPU-hours per million training images (all stages, by img share): {hours:.1f}; "
                     f"for train.max_images={cfg.train.max_images:,}: {hours * cfg.train.max_images / 1e6:,.0f} "
                     f"[from the borrowed throughputs: {cfg.plan.throughput_source or 'unlabelled'}]")
    lines += format_memory(cfg, schedule, world_size)
    band = cfg.schedule.band_stats
    if band is not None and band.sigma_perp2:
        lines.append(f"Turning points from band-SNR rule (threshold {band.snr_threshold}) with sigma_perp^2="
                     f"{band.sigma_perp2} [source: {band.source}]")
    return "\n".join(lines)
