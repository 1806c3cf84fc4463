"""Cost model and the band-SNR turning-point rule (dvdp-math.md s8)."""
from typing import Sequence

from .betas import global_abar
from .grid import step_grid
from .schedule import DVDPSchedule, pyramid_levels, schedule_shift


def _call_pixel_fractions(schedule: DVDPSchedule, steps: int | None, policy: str | None) -> list[float]:
    """(r_k / r_0)^2 of every denoiser call of the step grid."""
    calls = step_grid(schedule, steps, policy)[:-1]
    return [(schedule.stage_resolution(schedule.stage_of(t)) / schedule.resolution) ** 2 for t in calls]


# dvdp-math.md s8: sum over denoiser calls of (r_k / r_0)^2, divided by the number of calls
def cost_fraction(schedule: DVDPSchedule, steps: int | None = None, policy: str | None = None) -> float:
    """policy: the step grid's (grid.step_grid; None = the schedule's sampling_grid)."""
    fractions = _call_pixel_fractions(schedule, steps, policy)
    return sum(fractions) / len(fractions)


# dvdp-math.md s8: the same sum, not divided: one sample's denoiser compute in full-resolution calls
def full_resolution_calls(schedule: DVDPSchedule, steps: int | None = None, policy: str | None = None) -> float:
    return sum(_call_pixel_fractions(schedule, steps, policy))


def cost_matched_steps(schedule: DVDPSchedule, steps: int, policy: str, other: str) -> int:
    """The step count at which grid policy `other` costs (full_resolution_calls) what `policy` costs
    at `steps`: grids compared at equal sampling compute rather than at equal denoiser calls."""
    target = full_resolution_calls(schedule, steps, policy)
    candidates = range(schedule.num_stages, schedule.num_steps + 1)
    return min(candidates, key=lambda n: abs(full_resolution_calls(schedule, n, other) - target))


# dvdp-math.md s8: per-coordinate SNR of the band removed at the end of stage k
def band_snr(abar_t: float, band_variance: float) -> float:
    return abar_t * band_variance / (1 - abar_t)


def propose_turning_points(resolution: int, root_resolution: int, band_variances: Sequence[float],
                           num_steps: int = 1000, beta_schedule: str = "cosine",
                           threshold: float = 0.03, shift_base: int | None = None) -> list[int]:
    """First t at which each removed band's SNR drops below threshold (dvdp-math.md s8).

    band_variances[k]: per-coordinate variance of Q'z0 at stage k in orthonormal units (4^k times the
    pixel-unit variance, data_tools/band_stats.py), k = 0 .. K-1. Points are made strictly increasing.
    Works on any named schedule: the band SNR is read from that schedule's abar_t (shifted ones included).
    """
    levels = pyramid_levels(resolution, root_resolution)
    if len(band_variances) != levels:
        raise ValueError(f"band_variances needs {levels} entries (one per stage boundary), got {len(band_variances)}")
    abar = global_abar(beta_schedule, num_steps, schedule_shift(beta_schedule, resolution, root_resolution, shift_base))
    points, previous = [], 0
    for variance in band_variances:
        t = next((t for t in range(1, num_steps) if band_snr(float(abar[t]), variance) < threshold), num_steps - 1)
        t = max(t, previous + 1)
        if t >= num_steps:
            raise ValueError(f"threshold={threshold} leaves no room for {levels} turning points in {num_steps} steps")
        points.append(t)
        previous = t
    return points
