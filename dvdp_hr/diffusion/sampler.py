"""Samplers across stages: ancestral and DDIM(eta) on full or strided step grids (dvdp-math.md s5).

Randomness is injected per image: image i's noise comes from its own generator seeded with
seeds[i], so it is the same for any batch size or GPU count.
"""
from typing import Callable, Sequence

import torch

from .grid import step_grid
from .ops import detail
from .process import apply_step, step_coefficients, upsample_at_turning_point
from .schedule import DVDPSchedule

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Grid = str | Sequence[int] | None  # a policy name (grid.step_grid), the grid itself, or None (the schedule's)


class PerImageNoise:
    """Draws standard normal noise image by image, each from its own seeded generator."""

    def __init__(self, seeds: Sequence[int], device: torch.device, dtype: torch.dtype):
        self.generators = [torch.Generator(device).manual_seed(int(s)) for s in seeds]
        self.device, self.dtype = device, dtype

    def __call__(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=g, device=self.device, dtype=self.dtype)
                            for g in self.generators])


PosteriorNoise = Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor]
VarianceCorrection = Sequence[float] | PosteriorNoise | None
# on_turning_point(stage, t, y): stage k+1 ends at t = tau_{k+1} with state y (orthonormal stage-(k+1)
# units, where gamma = 1, so y ~ N(sqrt(abar_t) D_{k+1} x0, (1 - abar_t) I) for a perfect sampler)
TurningPointHook = Callable[[int, int, torch.Tensor], None]


# dvdp-math.md s7: the short-ramp variance correction. Plugging E[z0|y_t] into the posterior drops the
# term C Var[z0|y_t] C^T; adding noise with covariance ~Var[z0|y_t] to the z0 estimate restores it (a
# posterior sample of z0 instead of its mean). Floats are each stage's per-coordinate prior variance
# sigma_perp^2 of Q'z0 (orthonormal units, data_tools/band_stats.py) under a white Gaussian prior:
# Var[Q'z0_i | y_t] = sigma^2 v_t / (abar_t gamma_t^2 sigma^2 + v_t). A callable (xi, y_t, t, k) must
# return noise with covariance ~Var[z0 | y_t] given standard normal xi (e.g. a learned posterior std).
def posterior_noise_fn(schedule: DVDPSchedule, correction: VarianceCorrection) -> PosteriorNoise | None:
    if correction is None or callable(correction):
        return correction
    if len(correction) != schedule.num_stages - 1:
        raise ValueError(f"variance_correction needs one band variance per stage boundary "
                         f"({schedule.num_stages - 1}), got {len(correction)}")

    def white_band_noise(xi: torch.Tensor, y_t: torch.Tensor, t: int, k: int) -> torch.Tensor:
        prior, abar, gamma = float(correction[k]), float(schedule.abar[t]), float(schedule.gammas[k][t])
        return (prior * (1 - abar) / (abar * gamma**2 * prior + 1 - abar)) ** 0.5 * detail(xi)

    return white_band_noise


@torch.no_grad()
def sample(denoiser: Denoiser, schedule: DVDPSchedule, seeds: Sequence[int], channels: int = 3,
           method: str = "ancestral", steps: int | Sequence[int] | None = None, eta: float = 0.0, device="cpu",
           clip: bool = True, variance_correction: VarianceCorrection = None,
           dtype: torch.dtype = torch.float32, on_turning_point: TurningPointHook | None = None,
           grid: Grid = None) -> torch.Tensor:
    """Generates one full-resolution image per seed (pixel units, clamped to [-1, 1] when clip).

    method="ancestral" is the exact posterior step (DDIM with eta = 1, also on a strided grid);
    method="ddim" uses the given eta. grid: how `steps` calls are placed (grid.step_grid policy
    "uniform" or "logsnr"; None = schedule.sampling_grid) or the descending times themselves (then
    leave steps None). variance_correction switches on the short-ramp correction
    (posterior_noise_fn) in every attenuated stage. on_turning_point, when given, sees the state
    of every stage but the finest as that stage ends (before the reverse turning point; the
    per-stage diagnostics of dvdp_hr.metrics.stages); it must not modify the tensor.
    """
    if method not in ("ancestral", "ddim"):
        raise ValueError(f"method must be 'ancestral' or 'ddim', got {method!r}")
    if dtype not in (torch.float32, torch.float64):
        # per-step coefficients such as 0.9997 round to 1 in bf16: the state must stay fp32
        raise ValueError(f"dtype must be torch.float32 or torch.float64 (the sampling state), got {dtype}; "
                         f"run a bf16 denoiser under torch.autocast inside the denoiser instead")
    eta = 1.0 if method == "ancestral" else float(eta)
    device = torch.device(device)
    noise = PerImageNoise(seeds, device, dtype)
    posterior_noise = posterior_noise_fn(schedule, variance_correction)
    size = schedule.stage_resolution(schedule.num_stages - 1)
    y = noise((channels, size, size))
    for t, s, k in reverse_walk(schedule, steps, grid):
        if s is None:
            if on_turning_point is not None:
                on_turning_point(k + 1, t, y)
            y = upsample_at_turning_point(schedule, y, t, noise(y.shape[1:-2] + (y.shape[-2] * 2, y.shape[-1] * 2)))
        else:
            y = _reverse_step(denoiser, schedule, y, t, s, k, eta, noise, clip, posterior_noise)
    return y.clamp(-1, 1) if clip else y  # the correction's noise can leave [-1, 1] at the last step


def reverse_walk(schedule: DVDPSchedule, steps: int | Sequence[int] | None = None, grid: Grid = None):
    """The reverse path as events (t, s, k): a step t -> s in stage k, or (t, None, k) for the
    reverse turning point at t = tau_{k+1} that moves the state from stage k+1 to stage k."""
    grid = resolve_grid(schedule, steps, grid)
    stage = schedule.num_stages - 1
    for t, s in zip(grid[:-1], grid[1:]):
        k = schedule.stage_of(t)
        while stage > k:
            stage -= 1
            yield t, None, stage
        yield t, s, k


def resolve_grid(schedule: DVDPSchedule, steps: int | Sequence[int] | None, grid: Grid) -> list[int]:
    """The descending times of a (steps, grid) pair as sample() takes them."""
    if grid is None or isinstance(grid, str):
        return step_grid(schedule, steps, grid)
    if steps is not None and (not isinstance(steps, int) or steps != len(grid) - 1):
        raise ValueError(f"grid is an explicit list of {len(grid) - 1} steps but steps={steps!r}: pass one of them")
    return step_grid(schedule, list(grid))


def _reverse_step(denoiser, schedule, y, t, s, k, eta, noise, clip, posterior_noise):
    t_batch = torch.full((y.shape[0],), t, dtype=torch.long, device=y.device)
    x0 = denoiser(y, t_batch).to(y.dtype)
    z0 = (x0.clamp(-1, 1) if clip else x0) * 2**k
    if posterior_noise is not None and k < schedule.num_stages - 1:
        z0 = z0 + posterior_noise(noise(y.shape[1:]), y, t, k).to(y.dtype)
    xi = noise(y.shape[1:]) if eta > 0 else torch.zeros_like(y)
    return apply_step(step_coefficients(schedule, t, s, k, eta), y, z0, xi)
