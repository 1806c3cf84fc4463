"""Denoiser FLOPs, counted by torch's FlopCounterMode on the real network: the compute the demo's
two arms are matched on. It counts matrix multiplies and convolutions (forward and backward);
normalisation and pointwise ops are left out, as in the usual FLOP accounting of diffusion papers."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from dvdp_hr.diffusion import sample, training_loss


def _counted(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def training_flops_per_image(model: torch.nn.Module, cfg, schedule) -> list[int]:
    """Forward + backward FLOPs of one training image at each stage (finest first), at a time in the
    middle of the stage (the network's cost does not depend on t)."""
    flops = []
    for k in range(schedule.num_stages):
        lo, hi = schedule.stage_bounds(k)
        t = torch.tensor([(lo + hi + 1) // 2])
        res = schedule.stage_resolution(k)
        x0 = torch.zeros(1, 3, schedule.resolution, schedule.resolution)
        noise = torch.randn(1, 3, res, res, generator=torch.Generator().manual_seed(k))

        def step():
            y_t = schedule.q_sample(x0, t, noise)
            loss = training_loss(schedule, model(y_t, t), x0, noise, t, cfg.model.prediction, cfg.train.snr_gamma,
                                 y_t=y_t, weighting=cfg.train.loss_weighting, sigma_data=cfg.train.sigma_data)
            loss.mean().backward()

        flops.append(_counted(step))
    model.zero_grad(set_to_none=True)
    return flops


@torch.no_grad()
def sampling_flops_per_image(model: torch.nn.Module, schedule, steps: int, method: str = "ddim") -> int:
    """Denoiser FLOPs of generating one image with `steps` calls (every stage's calls at its resolution)."""
    return _counted(lambda: sample(model.predict_x0, schedule, [0], method=method, steps=steps))


def step_images(losses: list[dict]):
    """(record, images that step trained) for each loss.jsonl record (one per optimizer step, holding
    the cumulative image count), in step order."""
    before = 0
    for record in sorted(losses, key=lambda r: r["step"]):
        yield record, record["images"] - before
        before = record["images"]


def images_per_stage(losses: list[dict], num_stages: int) -> list[int]:
    """Training images per stage from loss.jsonl."""
    counts = [0] * num_stages
    for record, images in step_images(losses):
        counts[record["stage"]] += images
    return counts


def training_flops(losses: list[dict], per_image: list[int]) -> int:
    return sum(n * f for n, f in zip(images_per_stage(losses, len(per_image)), per_image))
