"""PNG sample grids from an export file or a run directory (EMA weights)."""
from __future__ import annotations

import os

import torch

from dvdp_hr.diffusion import sample
from dvdp_hr.metrics.logging import image_grid


def load_model(model_path: str, checkpoint: str | None = None):
    from dvdp_hr.export import load_pretrained, load_run

    if os.path.isdir(model_path):
        return load_run(model_path, checkpoint)
    return load_pretrained(model_path)


@torch.no_grad()
def draw_grid(model, schedule, out: str, count: int, seed_start: int = 0, steps: int = 50,
              method: str = "ddim", device="cpu") -> str:
    """PNG grid of `count` samples; image i uses seed seed_start + i (reproducible image by image)."""
    images = sample(model.predict_x0, schedule, list(range(seed_start, seed_start + count)), method=method,
                    steps=steps, device=device)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    return image_grid(images, out)


def sample_grid(model_path: str, out: str, count: int = 16, seed_start: int = 0, steps: int = 50,
                method: str = "ddim", checkpoint: str | None = None) -> str:
    """Grid from an export file or a run directory (its EMA weights), on the GPU when there is one."""
    model, schedule = load_model(model_path, checkpoint)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return draw_grid(model.to(device), schedule, out, count, seed_start, steps, method, device)
