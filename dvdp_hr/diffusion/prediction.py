"""Network outputs <-> x0 estimates, per band (dvdp-math.md s6, s11).

The network sees the input-normalised process (s6): x'_t = c_t y_t = a' G_t x + s' eps in PIXEL units,
a' = sqrt(abar'_t), s' = sqrt(1 - abar'_t), abar'_t = 4^k abar_t / (1 + (4^k - 1) abar_t). Outputs:
"x0" the pixel-unit image, "eps" the noise (the same in every unit), "v" = a' eps - s' x (s11, unit
scale at every stage), "v_orthonormal" = sqrt(abar) eps - sqrt(1 - abar) z0 (the definition before
issue 11, 2^k larger at stage k: kept so that earlier models still load).
"""
import torch

from . import ops
from .schedule import DVDPSchedule, batch_timesteps

PREDICTIONS = ("x0", "eps", "v", "v_orthonormal")


# dvdp-math.md s6: (a', s') of the input-normalised process at stage k, per sample [B] (float64)
def normalised_coefficients(schedule: DVDPSchedule, t: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    abar, g = schedule.abar[t], 4.0**k
    shifted = g * abar / (1 + (g - 1) * abar)
    return shifted.sqrt(), (1 - shifted).sqrt()


# dvdp-math.md s6/s11: output -> x0 estimate in PIXEL units at the stage resolution. v keeps the
# UNattenuated x, so the detail band stays recoverable at gamma = 0 (division by a^2 gamma + s^2,
# never by gamma); eps needs Q's / max(gamma, gamma_min).
def prediction_to_x0(schedule: DVDPSchedule, output: torch.Tensor, y_t: torch.Tensor, t,
                     prediction: str = "x0", gamma_min: float = 0.1) -> torch.Tensor:
    k = schedule.stage_of_batch(t)
    if prediction == "x0":
        return output
    t = batch_timesteps(t, y_t.shape[0])
    g = schedule.gamma(t, k)
    if prediction == "eps":
        a, sig = schedule.abar[t].sqrt(), (1 - schedule.abar[t]).sqrt()
        x = (y_t - ops.per_sample(sig, y_t) * output) / ops.per_sample(a * 2**k, y_t)  # G_t x, pixel units
        detail_gain = 1 / g.clamp(min=gamma_min)
    elif prediction in ("v", "v_orthonormal"):
        a, sig, y = _v_frame(schedule, y_t, t, k, prediction)
        x = ops.per_sample(a, y) * y - ops.per_sample(sig, y) * output  # P'x = a P'y - s P'v
        detail_gain = 1 / (a**2 * g + sig**2)  # Q'x = (a Q'y - s Q'v) / (a^2 gamma + s^2)
        if prediction == "v_orthonormal":
            x = x / 2**k
    else:
        raise ValueError(f"prediction must be one of {list(PREDICTIONS)}, got {prediction!r}")
    if k < schedule.num_stages - 1:  # the root stage has no attenuated band (G = I)
        x = ops.band_scale(x, torch.ones_like(g), detail_gain)
    return x


def _v_frame(schedule: DVDPSchedule, y_t: torch.Tensor, t: torch.Tensor, k: int, prediction: str):
    """(a, s, state) in which v = a eps - s x: the normalised process, or the orthonormal one."""
    if prediction == "v":
        a, sig = normalised_coefficients(schedule, t, k)
        return a, sig, y_t * ops.per_sample(sig / (1 - schedule.abar[t]).sqrt(), y_t)  # c_t y_t
    return schedule.abar[t].sqrt(), (1 - schedule.abar[t]).sqrt(), y_t


# dvdp-math.md s6/s11: what each parameterisation outputs for the true x0 (eps: the noise; x0: the
# pixel-unit stage image; v: in its own frame). A reference for tests and users.
def prediction_target(schedule: DVDPSchedule, x0_pixel: torch.Tensor, noise: torch.Tensor, t,
                      prediction: str) -> torch.Tensor:
    k = schedule.stage_of_batch(t)
    x0_stage = schedule.stage_image(x0_pixel, k)
    if prediction == "x0":
        return x0_stage
    if prediction == "eps":
        return noise
    t = batch_timesteps(t, noise.shape[0])
    if prediction == "v":
        a, sig = normalised_coefficients(schedule, t, k)
        return ops.per_sample(a, noise) * noise - ops.per_sample(sig, noise) * x0_stage
    if prediction == "v_orthonormal":
        a, sig = schedule.abar[t].sqrt(), (1 - schedule.abar[t]).sqrt()
        return ops.per_sample(a, noise) * noise - ops.per_sample(sig, noise) * x0_stage * 2**k
    raise ValueError(f"prediction must be one of {list(PREDICTIONS)}, got {prediction!r}")
