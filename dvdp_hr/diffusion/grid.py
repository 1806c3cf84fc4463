"""Sampling step grids by policy (dvdp-math.md s10): which times the sampler calls the denoiser at."""
from typing import Sequence

import torch

from .schedule import GRID_POLICIES, DVDPSchedule

# Pixel log-SNR window that counts towards a stage's span (dvdp-math.md s10), where face images
# change: the finest FFHQ-1024 band (pixel variance ~0.0035) reaches SNR 1 at +5.7 (+2.3 nats of
# margin: 8); a 64 px root's mean colour (orthonormal variance ~4096 x 0.07) does at -5.7 (-6).
# Set from image statistics, not tuned: on the 16 px oracle [-6, 8] beats [-10, 10] for DDIM and a
# narrower [-4, 6] scores better still, but that oracle's root is one pixel (s10).
LOGSNR_WINDOW = (-6.0, 8.0)


def step_grid(schedule: DVDPSchedule, steps: int | Sequence[int] | None = None, policy: str | None = None,
              min_per_stage: int = 2) -> list[int]:
    """Descending times T = g_0 > ... > g_n = 0 holding every turning point; n = steps denoiser calls.

    steps=None is the full grid; a sequence is taken as the grid itself (validated), e.g. to compare
    two schedules on the same grid. An int is shared between the stages by `policy` (None: the
    schedule's sampling_grid): "uniform" in proportion to each stage's length in t (at least one per
    stage), "logsnr" in proportion to its pixel log-SNR span inside LOGSNR_WINDOW (at least
    min_per_stage). Inside a stage the points are evenly spaced in t, tau_{k+1} included.
    """
    if steps is None:
        return list(range(schedule.num_steps, -1, -1))
    if not isinstance(steps, int):
        return _validated_grid(schedule, [int(t) for t in steps])
    policy = policy or schedule.sampling_grid
    if policy not in GRID_POLICIES:
        raise ValueError(f"grid policy must be one of {list(GRID_POLICIES)} (or pass the grid itself as a "
                         f"list of times), got {policy!r}")
    if not schedule.num_stages <= steps <= schedule.num_steps:
        raise ValueError(f"steps must be in [{schedule.num_stages}, {schedule.num_steps}] "
                         f"(at least one per stage), got {steps}")
    shares = stage_lengths(schedule) if policy == "uniform" else stage_logsnr_spans(schedule)
    minimum = 1 if policy == "uniform" else max(1, min(min_per_stage, steps // schedule.num_stages))
    grid = [0]
    for k, count in enumerate(allocate(steps, shares, stage_lengths(schedule), minimum)):
        lo, hi = schedule.stage_bounds(k)
        grid += torch.linspace(lo, hi, count + 1, dtype=torch.float64)[1:].round().long().tolist()
    return sorted(set(grid), reverse=True)


def stage_lengths(schedule: DVDPSchedule) -> list[int]:
    return [hi - lo for lo, hi in zip(schedule.bounds[:-1], schedule.bounds[1:])]


# dvdp-math.md s10: span of stage k's pixel log-SNR over [tau_k, tau_{k+1}] inside LOGSNR_WINDOW
def stage_logsnr_spans(schedule: DVDPSchedule, window: tuple[float, float] = LOGSNR_WINDOW) -> list[float]:
    spans = []
    for k in range(schedule.num_stages):
        lo, hi = schedule.stage_bounds(k)
        top = min(schedule.pixel_logsnr(lo, k), window[1])
        bottom = max(schedule.pixel_logsnr(hi, k), window[0])
        spans.append(max(top - bottom, 0.0))
    return spans


def allocate(total: int, shares: Sequence[float], capacity: Sequence[int], minimum: int = 1) -> list[int]:
    """`total` integers in proportion to `shares`, each in [min(minimum, capacity_k), capacity_k]."""
    weight = sum(shares)
    if weight <= 0:
        shares, weight = list(capacity), sum(capacity)
    floor = [min(minimum, c) for c in capacity]
    counts = [max(f, min(c, round(total * s / weight))) for s, c, f in zip(shares, capacity, floor)]
    while sum(counts) != total:  # fix rounding: adjust the stage furthest above (or below) its share
        ratio = [c / s if s > 0 else float("inf") for c, s in zip(counts, shares)]
        if sum(counts) > total:
            k = max((i for i in range(len(counts)) if counts[i] > floor[i]), key=lambda i: ratio[i])
            counts[k] -= 1
        else:
            k = min((i for i in range(len(counts)) if counts[i] < capacity[i]), key=lambda i: ratio[i])
            counts[k] += 1
    return counts


def _validated_grid(schedule: DVDPSchedule, grid: list[int]) -> list[int]:
    descending = all(a > b for a, b in zip(grid[:-1], grid[1:]))
    if not grid or grid[0] != schedule.num_steps or grid[-1] != 0 or not descending:
        raise ValueError(f"a steps grid must descend strictly from num_steps={schedule.num_steps} to 0")
    missing = sorted(set(schedule.turning_points) - set(grid))
    if missing:
        raise ValueError(f"the steps grid must contain every turning point; missing {missing}")
    return grid


def parse_grid(text: str) -> str | list[int]:
    """A --grid value: a policy name, or comma-separated descending times (e.g. "1000,750,500,250,0")."""
    text = text.strip()
    if text in GRID_POLICIES:
        return text
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"--grid must be one of {list(GRID_POLICIES)} or comma-separated times such as "
                         f"'1000,750,500,250,0', got {text!r}") from None
