"""The sampling engine every caller shares (training grids, evaluation, `dvdp-hr sample`).

Image i is a function of seed i only: the sampler draws each image's noise from its own generator
(dvdp_hr.diffusion.sampler.PerImageNoise) and the batch plan (seeds.py) fixes which images share a
batch, so the images are bitwise identical for any number of ranks and equal within float tolerance
for another batch size. The denoiser runs under bf16 autocast while the sampler state stays fp32
(per-step coefficients such as 0.9997 round to 1 in bf16).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from dvdp_hr.diffusion import DVDPSchedule, sample

from .seeds import batch_plan, deal

PRECISIONS = ("bf16", "fp32")
# Live activations of one 1024 px image in a ~120M ADM UNet step: ~4 GiB in fp32 (the meta-device
# trace in issue 10: 16 images ~64 GiB), half in bf16; they scale with the pixel count.
GIB_PER_1024_IMAGE = {"fp32": 4.0, "bf16": 2.0}
# (seeds of the batch, stage, t, state): a turning-point hook that knows which images it sees
BatchTurningPointHook = Callable[[list[int], int, int, torch.Tensor], None]


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' is bf16 on CUDA and fp32 on CPU (CPU bf16 autocast is slower than fp32 on most CPUs)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}")
    return precision


def default_batch(resolution: int, precision: str = "bf16", budget_gib: float = 16.0) -> int:
    """A micro-batch whose activations take about `budget_gib` (capped at 64): 8 at 1024 in bf16."""
    per_image = GIB_PER_1024_IMAGE[precision] * (resolution / 1024) ** 2
    return int(max(1, min(64, budget_gib // per_image)))


def autocast_denoiser(model, device: torch.device, precision: str):
    """The sampler's denoiser: model.predict_x0 (or a plain callable) under bf16 autocast, fp32 out."""
    predict = model.predict_x0 if hasattr(model, "predict_x0") else model
    if precision == "fp32":
        return predict

    def denoise(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            return predict(y, t).float()

    return denoise


def quantize(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C]: the exact bytes the PNGs hold (metrics use these)."""
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def iter_batches(model, schedule: DVDPSchedule, batches: Iterable[Sequence[int]], *, steps: int | None = 50,
                 method: str = "ddim", eta: float = 0.0, device="cpu", precision: str = "auto",
                 channels: int = 3, on_turning_point: BatchTurningPointHook | None = None,
                 grid=None, variance_correction=None) -> Iterator[tuple[list[int], np.ndarray]]:
    """(seeds, uint8 [B, H, W, C]) for each batch, in the order given. grid: the sampler's step-grid
    policy or times (None: the schedule's sampling_grid)."""
    device = torch.device(device)
    denoise = autocast_denoiser(model, device, resolve_precision(precision, device))
    extra = {"grid": grid} if grid is not None else {}
    for seeds in batches:
        seeds = [int(s) for s in seeds]
        hook = functools.partial(on_turning_point, seeds) if on_turning_point is not None else None
        images = sample(denoise, schedule, seeds, channels=channels, method=method, steps=steps, eta=eta,
                        device=device, on_turning_point=hook, variance_correction=variance_correction, **extra)
        yield seeds, quantize(images)


def generate(model, schedule: DVDPSchedule, seeds: Sequence[int], *, batch: int, steps: int | None = 50,
             method: str = "ddim", eta: float = 0.0, device="cpu", rank: int = 0, world: int = 1,
             precision: str = "auto", channels: int = 3,
             on_turning_point: BatchTurningPointHook | None = None, grid=None,
             variance_correction=None) -> dict[int, np.ndarray]:
    """{seed: uint8 HWC} for this rank's share of `seeds` (call on every rank; no collective inside).
    dvdp_hr.sampling.gather_images collects every rank's share where all of them are needed."""
    mine = deal(batch_plan(seeds, batch), rank, world)
    out: dict[int, np.ndarray] = {}
    for batch_seeds, pixels in iter_batches(model, schedule, mine, steps=steps, method=method, eta=eta,
                                            device=device, precision=precision, channels=channels,
                                            on_turning_point=on_turning_point, grid=grid,
                                            variance_correction=variance_correction):
        out.update(zip(batch_seeds, pixels))
    return out


def gather_images(images: dict[int, np.ndarray], image_shape: tuple[int, int, int]) -> dict[int, np.ndarray]:
    """Every rank's {seed: uint8 HWC} on every rank, ordered by seed (collective). image_shape
    (H, W, C) lets a rank that drew nothing take part."""
    from dvdp_hr.distributed.collect import gather_rows

    seeds = torch.tensor(sorted(images), dtype=torch.long)
    stack = torch.zeros((0, *image_shape), dtype=torch.uint8)
    if len(seeds):
        stack = torch.from_numpy(np.stack([images[int(s)] for s in seeds]))
    all_seeds, all_images = gather_rows(seeds), gather_rows(stack)
    return {int(all_seeds[i]): all_images[i].numpy() for i in torch.argsort(all_seeds)}
