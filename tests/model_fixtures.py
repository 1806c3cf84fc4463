"""Helpers shared by the model tests."""
import torch


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Replace the zero/identity init so every path contributes to outputs and gradients."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return module


def three_stage_schedule():
    """64 -> 32 -> 16 px, turning points 300/600, cosine betas: the model tests' schedule."""
    from dvdp_hr.diffusion import DVDPSchedule

    return DVDPSchedule(resolution=64, root_resolution=16, turning_points=[300, 600], num_steps=1000,
                        beta_schedule="cosine")
