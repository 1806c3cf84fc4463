"""Kernels, posterior and turning points (dvdp-math.md s3-s5); prediction conversions live in
prediction.py, the training loss in loss.py.

Every function works in the orthonormal stage-k units of dvdp-math.md s1 unless it says
"pixel units". s < t are two times inside the same stage k (s may be the stage's lower end).
"""
from dataclasses import dataclass

import torch

from . import ops
from .schedule import DVDPSchedule, batch_timesteps


@dataclass
class BandCoefficients:
    """Per-sample coefficients [B] (float64) for the low band P' and the detail band Q'."""
    low: torch.Tensor
    detail: torch.Tensor


def _gammas(schedule: DVDPSchedule, t: torch.Tensor, s: torch.Tensor, k: int):
    return schedule.gamma(t, k), schedule.gamma(s, k)


# dvdp-math.md s3: q(y_t | y_s) = N( sqrt(abar_t/abar_s) (P' + r Q') y_s, (1 - abar_t/abar_s) P' + s_ts Q' ),
# r = gamma_t / gamma_s, s_ts = v_t - (abar_t/abar_s) r^2 v_s  (s = t - 1 gives the one-step kernel)
def kernel_coefficients(schedule: DVDPSchedule, t, s, k: int) -> tuple[BandCoefficients, BandCoefficients]:
    t, s = batch_timesteps(t, 1), batch_timesteps(s, 1)
    ratio = schedule.abar[t] / schedule.abar[s]
    g_t, g_s = _gammas(schedule, t, s, k)
    r = g_t / g_s
    v_t, v_s = 1 - schedule.abar[t], 1 - schedule.abar[s]
    scale = BandCoefficients(ratio.sqrt(), ratio.sqrt() * r)
    var = BandCoefficients(1 - ratio, v_t - ratio * r**2 * v_s)
    if k == schedule.num_stages - 1:  # no attenuation at the root: keep both bands bitwise equal
        var.detail = var.low
    return scale, var


# dvdp-math.md s3: draws y_t ~ q(y_t | y_s) inside stage k
def q_step(schedule: DVDPSchedule, y_s: torch.Tensor, s, t, noise: torch.Tensor) -> torch.Tensor:
    k = schedule.stage_of_batch(t)
    scale, var = kernel_coefficients(schedule, t, s, k)
    mean = ops.band_scale(y_s, scale.low, scale.detail)
    return mean + ops.band_scale(noise, var.low.clamp(min=0).sqrt(), var.detail.clamp(min=0).sqrt())


@dataclass
class StepCoefficients:
    """y_s = z0_coef . z0 + y_coef . y_t + sqrt(variance) . xi, each split into P' and Q' bands."""
    z0_coef: BandCoefficients
    y_coef: BandCoefficients
    variance: BandCoefficients


# dvdp-math.md s5 (DDIM form, generalised per band): eps_hat = (y_t - sqrt(abar_t) G_t z0) / sqrt(v_t),
# y_s = sqrt(abar_s) G_s z0 + sqrt(v_s - sigma^2) eps_hat + sigma xi, sigma^2 = eta^2 * posterior variance.
# eta = 1 is exactly the posterior q(y_s | y_t, z0) of s5 (ancestral); eta = 0 is deterministic DDIM.
def step_coefficients(schedule: DVDPSchedule, t, s, k: int, eta: float) -> StepCoefficients:
    t, s = batch_timesteps(t, 1), batch_timesteps(s, 1)
    _, kernel_var = kernel_coefficients(schedule, t, s, k)
    a_t, a_s = schedule.abar[t].sqrt(), schedule.abar[s].sqrt()
    v_t, v_s = 1 - schedule.abar[t], 1 - schedule.abar[s]
    g_t, g_s = _gammas(schedule, t, s, k)
    bands = {}
    for band, gain_t, gain_s, k_var in (("low", 1.0, 1.0, kernel_var.low), ("detail", g_t, g_s, kernel_var.detail)):
        posterior_var = (v_s * k_var / v_t).clamp(min=0)
        sigma2 = eta**2 * posterior_var
        y_coef = ((v_s - sigma2).clamp(min=0) / v_t).sqrt()
        bands[band] = (a_s * gain_s - y_coef * a_t * gain_t, y_coef, sigma2)
    return StepCoefficients(*(BandCoefficients(bands["low"][i], bands["detail"][i]) for i in range(3)))


# dvdp-math.md s5: the posterior q(y_{t-1} | y_t, z0) of both bands, in closed form (tests compare
# it to step_coefficients(eta=1)); returns (coef on z0, coef on y_t, variance) per band
def posterior_coefficients(schedule: DVDPSchedule, t: int, k: int) -> StepCoefficients:
    t_, s_ = batch_timesteps(t, 1), batch_timesteps(t - 1, 1)
    beta, alpha = schedule.betas[t_], schedule.alphas[t_]
    v_t, v_s = 1 - schedule.abar[t_], 1 - schedule.abar[s_]
    g_t, g_s = _gammas(schedule, t_, s_, k)
    r = g_t / g_s
    s_t = v_t - alpha * r**2 * v_s
    z0_low = schedule.abar[s_].sqrt() * beta / v_t
    z0_detail = s_t / v_t * schedule.abar[s_].sqrt() * g_s
    y_low, y_detail = alpha.sqrt() * v_s / v_t, alpha.sqrt() * r * v_s / v_t
    return StepCoefficients(BandCoefficients(z0_low, z0_detail), BandCoefficients(y_low, y_detail),
                            BandCoefficients(beta * v_s / v_t, v_s * s_t / v_t))


# Applies one reverse step given the z0 estimate (orthonormal units) and standard normal noise xi.
def apply_step(c: StepCoefficients, y_t: torch.Tensor, z0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    mean = ops.band_scale(z0, c.z0_coef.low, c.z0_coef.detail) + ops.band_scale(y_t, c.y_coef.low, c.y_coef.detail)
    return mean + ops.band_scale(noise, c.variance.low.sqrt(), c.variance.detail.sqrt())


# dvdp-math.md s4: forward turning point; D y_t is exactly the coarser stage's marginal
def downsample_at_turning_point(y_t: torch.Tensor) -> torch.Tensor:
    return ops.down(y_t)


# dvdp-math.md s5: reverse turning point, y^(k) = U y^(k+1) + sqrt(1 - abar_t) Q' xi (xi at the finer size)
def upsample_at_turning_point(schedule: DVDPSchedule, y_coarse: torch.Tensor, t: int,
                              noise_fine: torch.Tensor) -> torch.Tensor:
    v_t = float(1 - schedule.abar[int(t)])
    return ops.up(y_coarse) + v_t**0.5 * ops.detail(noise_fine)
