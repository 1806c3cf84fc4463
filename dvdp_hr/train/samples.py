"""PNG sample grids from an export file or a run directory (EMA weights), through the sampling engine."""
from __future__ import annotations

import os

import torch

from dvdp_hr.sampling import default_batch, generate
from dvdp_hr.sampling.engine import resolve_precision
from dvdp_hr.sampling.grid import save_grid


def load_model(model_path: str, checkpoint: str | None = None):
    from dvdp_hr.export import load_pretrained, load_run

    if os.path.isdir(model_path):
        return load_run(model_path, checkpoint)
    return load_pretrained(model_path)


@torch.no_grad()
def draw_grid(model, schedule, out: str, count: int, seed_start: int = 0, steps: int = 50,
              method: str = "ddim", device="cpu", batch: int | None = None, precision: str = "auto") -> str:
    """PNG grid of `count` samples on this process; image i uses seed seed_start + i (reproducible
    image by image: the same pixels as `dvdp-hr sample --seeds` writes for those seeds)."""
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    batch = batch or default_batch(schedule.resolution, precision)
    seeds = list(range(seed_start, seed_start + count))
    images = generate(model, schedule, seeds, batch=batch, steps=steps, method=method, device=device,
                      precision=precision)
    return save_grid([images[s] for s in seeds], out)


def sample_grid(model_path: str, out: str, count: int = 16, seed_start: int = 0, steps: int = 50,
                method: str = "ddim", checkpoint: str | None = None) -> str:
    """Grid from an export file or a run directory (its EMA weights), on the GPU when there is one."""
    model, schedule = load_model(model_path, checkpoint)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return draw_grid(model.to(device), schedule, out, count, seed_start, steps, method, device)
