"""How training effort is shared between stages (dvdp-math.md s12): the stage-weighting policies
and each stage's share of timesteps, log-SNR, optimizer steps, images and compute (the plan's columns)."""
from __future__ import annotations

from dvdp_hr.diffusion import stage_logsnr_spans

STAGE_WEIGHTINGS = ("timestep_share", "uniform", "logsnr_span", "compute")


def normalised(values: list[float]) -> list[float]:
    total = sum(values)
    return [v / total for v in values] if total > 0 else [0.0 for _ in values]


def step_cost(cfg, schedule, k: int) -> float:
    """Denoiser pixels of one optimizer step of stage k, in full-resolution images (s8 cost model)."""
    images = cfg.train.micro_batch[k] * cfg.train.grad_accum[k]
    return images * (schedule.stage_resolution(k) / schedule.resolution) ** 2


# dvdp-math.md s12: relative probability that an optimizer step trains stage k, per policy
def policy_weights(cfg, schedule) -> list[float]:
    policy, stages = cfg.train.stage_weighting, range(schedule.num_stages)
    if policy == "timestep_share":  # t uniform over 1..T: stage k's share of the timesteps
        return schedule.stage_probabilities()
    if policy == "uniform":
        return [1.0 for _ in stages]
    if policy == "logsnr_span":  # the pixel log-SNR each stage covers: the same on any schedule
        return stage_logsnr_spans(schedule)
    if policy == "compute":  # the same training compute for every stage
        return [1.0 / step_cost(cfg, schedule, k) for k in stages]
    raise ValueError(f"train.stage_weighting must be one of {list(STAGE_WEIGHTINGS)}, got {policy!r}")


def compute_shares(cfg, schedule, step_weights: dict[int, float]) -> list[float]:
    """Each stage's share of training compute (denoiser pixels) given its optimizer-step weight."""
    return normalised([step_weights.get(k, 0.0) * step_cost(cfg, schedule, k) for k in range(schedule.num_stages)])


def logsnr_range_text(schedule, k: int) -> str:
    """Stage k's pixel log-SNR range, '[low, high]' (t = hi and t = lo + 1)."""
    low, high = schedule.stage_logsnr_range(k)
    return f"[{low:.1f},{high:.1f}]"
