"""Global VP noise schedules over integer time t = 0..T (dvdp-math.md s2)."""
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


BETA_SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


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
