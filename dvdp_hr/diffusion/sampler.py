"""Samplers across stages: ancestral and DDIM(eta) on full or strided step grids (dvdp-math.md s5).

Randomness is injected per image: image i's noise comes from its own generator seeded with
seeds[i], so it is the same for any batch size or GPU count.
"""
from typing import Callable, Sequence

import torch

from . import ops
from .process import apply_step, step_coefficients, upsample_at_turning_point
from .schedule import DVDPSchedule

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def step_grid(schedule: DVDPSchedule, steps: int | None = None) -> list[int]:
    """Descending times T = g_0 > ... > g_n = 0 holding every turning point; n = steps denoiser calls.

    steps=None is the full grid. A strided grid gives each stage a share of the steps proportional
    to its length (at least one), evenly spaced inside (tau_k, tau_{k+1}] with tau_{k+1} included.
    """
    if steps is None:
        return list(range(schedule.num_steps, -1, -1))
    if not schedule.num_stages <= steps <= schedule.num_steps:
        raise ValueError(f"steps must be in [{schedule.num_stages}, {schedule.num_steps}] "
                         f"(at least one per stage), got {steps}")
    grid = [0]
    for k, count in enumerate(_steps_per_stage(schedule, steps)):
        lo, hi = schedule.stage_bounds(k)
        points = torch.linspace(lo, hi, count + 1, dtype=torch.float64)[1:].round().long().tolist()
        grid += sorted(set(points))
    return sorted(set(grid), reverse=True)


def _steps_per_stage(schedule: DVDPSchedule, steps: int) -> list[int]:
    lengths = [hi - lo for lo, hi in zip(schedule.bounds[:-1], schedule.bounds[1:])]
    counts = [max(1, min(n, round(steps * n / schedule.num_steps))) for n in lengths]
    while sum(counts) != steps:  # fix rounding: adjust the stage with the most (or least) slack
        fractions = [c / n for c, n in zip(counts, lengths)]
        if sum(counts) > steps:
            k = max((i for i in range(len(counts)) if counts[i] > 1), key=lambda i: fractions[i])
            counts[k] -= 1
        else:
            k = min((i for i in range(len(counts)) if counts[i] < lengths[i]), key=lambda i: fractions[i])
            counts[k] += 1
    return counts


class PerImageNoise:
    """Draws standard normal noise image by image, each from its own seeded generator."""

    def __init__(self, seeds: Sequence[int], device: torch.device, dtype: torch.dtype):
        self.generators = [torch.Generator(device).manual_seed(int(s)) for s in seeds]
        self.device, self.dtype = device, dtype

    def __call__(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=g, device=self.device, dtype=self.dtype)
                            for g in self.generators])


BandVariance = Sequence[float] | Callable[[torch.Tensor, int, int], torch.Tensor] | None


# dvdp-math.md s7: estimate of Var[Q'z0 | y_t] for the short-ramp correction. Floats are each stage's
# per-coordinate prior variance sigma_perp^2 of Q'z0 (band_stats.json), used as a Gaussian prior:
# Var = sigma^2 v_t / (abar_t gamma_t^2 sigma^2 + v_t). A callable (y_t, t, k) -> variance is used as is.
def detail_posterior_variance(schedule: DVDPSchedule, band_variance: BandVariance, y_t: torch.Tensor,
                              t: int, k: int) -> torch.Tensor | None:
    if band_variance is None or k == schedule.num_stages - 1:
        return None
    if callable(band_variance):
        return torch.as_tensor(band_variance(y_t, t, k), dtype=torch.float64)
    prior = float(band_variance[k])
    abar, gamma = float(schedule.abar[t]), float(schedule.gammas[k][t])
    return torch.tensor(prior * (1 - abar) / (abar * gamma**2 * prior + 1 - abar), dtype=torch.float64)


@torch.no_grad()
def sample(denoiser: Denoiser, schedule: DVDPSchedule, seeds: Sequence[int], channels: int = 3,
           method: str = "ancestral", steps: int | None = None, eta: float = 0.0, device="cpu",
           clip: bool = True, band_variance: BandVariance = None,
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Generates one full-resolution image per seed (pixel units, [-1, 1] when clip).

    method="ancestral" is the exact posterior step (DDIM with eta = 1, also on a strided grid);
    method="ddim" uses the given eta. band_variance switches on the short-ramp variance correction.
    """
    if method not in ("ancestral", "ddim"):
        raise ValueError(f"method must be 'ancestral' or 'ddim', got {method!r}")
    eta = 1.0 if method == "ancestral" else float(eta)
    device = torch.device(device)
    noise = PerImageNoise(seeds, device, dtype)
    grid = step_grid(schedule, steps)
    stage = schedule.num_stages - 1
    size = schedule.stage_resolution(stage)
    y = noise((channels, size, size))
    for t, s in zip(grid[:-1], grid[1:]):
        k = schedule.stage_of(t)
        while stage > k:  # reverse turning point(s) at t = tau_{stage}
            stage -= 1
            y = upsample_at_turning_point(schedule, y, t, noise(y.shape[1:-2] + (y.shape[-2] * 2, y.shape[-1] * 2)))
        y = _reverse_step(denoiser, schedule, y, t, s, k, eta, noise, clip, band_variance)
    return y


def _reverse_step(denoiser, schedule, y, t, s, k, eta, noise, clip, band_variance):
    t_batch = torch.full((y.shape[0],), t, dtype=torch.long, device=y.device)
    x0 = denoiser(y, t_batch).to(y.dtype)
    if clip:
        x0 = x0.clamp(-1, 1)
    coefficients = step_coefficients(schedule, t, s, k, eta)
    extra = detail_posterior_variance(schedule, band_variance, y, t, k)
    xi = noise(y.shape[1:]) if eta > 0 or extra is not None else torch.zeros_like(y)
    return apply_step(coefficients, y, x0 * 2**k, xi, extra)
