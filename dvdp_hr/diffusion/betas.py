"""Global VP noise schedules over integer time t = 0..T (dvdp-math.md s2, s9)."""
import math

import torch


# dvdp-math.md s2: DDPM linear betas scaled to T steps, 1e-4*1000/T .. 0.02*1000/T
def linear_betas(num_steps: int) -> torch.Tensor:
    scale = 1000.0 / num_steps
    return torch.linspace(1e-4 * scale, 0.02 * scale, num_steps, dtype=torch.float64)


# dvdp-math.md s2: improved-DDPM cosine schedule, s = 0.008, betas clipped at 0.999
def cosine_betas(num_steps: int, offset: float = 0.008) -> torch.Tensor:
    def f(t: float) -> float:
        return math.cos((t / num_steps + offset) / (1 + offset) * math.pi / 2) ** 2

    betas = [min(1 - f(t) / f(t - 1), 0.999) for t in range(1, num_steps + 1)]
    return torch.tensor(betas, dtype=torch.float64)


# dvdp-math.md s9: logSNR(t) = logSNR_cosine(t) - shift * w(t); w = 1 (shifted, simple diffusion) or
# w = t / T (interpolated: no shift at t = 0, the full shift at t = T). Betas follow from abar.
def shifted_cosine_betas(num_steps: int, shift: float, interpolate: bool) -> torch.Tensor:
    _, _, abar = cumulative_alphas(cosine_betas(num_steps))
    t = torch.arange(1, num_steps + 1, dtype=torch.float64)
    weight = t / num_steps if interpolate else torch.ones_like(t)
    logsnr = torch.logit(abar[1:]) - shift * weight
    abar = torch.cat([torch.ones(1, dtype=torch.float64), torch.sigmoid(logsnr)])
    return 1 - abar[1:] / abar[:-1]


# name -> (uses the resolution shift, betas(num_steps, shift))
BETA_SCHEDULES = {
    "linear": (False, lambda n, shift: linear_betas(n)),
    "cosine": (False, lambda n, shift: cosine_betas(n)),
    "cosine_shifted": (True, lambda n, shift: shifted_cosine_betas(n, shift, interpolate=False)),
    "cosine_interpolated": (True, lambda n, shift: shifted_cosine_betas(n, shift, interpolate=True)),
}


# dvdp-math.md s9: simple diffusion's shift 2 log(resolution / base), base = the root by default
def logsnr_shift(resolution: int, shift_base: int) -> float:
    return 2 * math.log(resolution / shift_base)


def make_betas(name: str, num_steps: int, shift: float = 0.0) -> torch.Tensor:
    """Betas [T] (float64) of a named schedule; `shift` (nats of log-SNR) is used by the shifted ones."""
    if name not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule must be one of {sorted(BETA_SCHEDULES)}, got {name!r}")
    return BETA_SCHEDULES[name][1](num_steps, shift)


def global_abar(name: str, num_steps: int, shift: float = 0.0) -> torch.Tensor:
    """abar_t for t = 0..T of a named schedule (the turning-point rule's view of it)."""
    return cumulative_alphas(make_betas(name, num_steps, shift))[2]


# abar_t = prod_{s<=t} (1 - beta_s), with abar_0 = 1; returned arrays are indexed by t = 0..T
def cumulative_alphas(betas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    betas = torch.cat([torch.zeros(1, dtype=torch.float64), betas])
    alphas = 1 - betas
    return betas, alphas, torch.cumprod(alphas, 0)


# dvdp-math.md s3: attenuation gamma(u), u in [0, 1] the position inside a stage; 1 -> 0
def attenuation(u: torch.Tensor, ramp: str) -> torch.Tensor:
    if ramp == "cosine":
        g = torch.cos(math.pi * u / 2)
    else:
        g = 1 - u
    return torch.where(u >= 1, torch.zeros_like(g), g.clamp(0, 1))


RAMPS = ("cosine", "linear")
