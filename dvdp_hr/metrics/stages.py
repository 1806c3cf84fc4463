"""Per-stage diagnostics: SWD of each stage's state as it ends vs the data at that stage.

When stage k (> 0) ends at t = tau_k the sampler holds y at resolution r_k with gamma = 1, and for a
perfect model y ~ N(sqrt(abar_t) 2^k x0_k, (1 - abar_t) I) with x0_k the data box-averaged to r_k
(dvdp-math.md s1, s3). In pixel units, y / (2^k sqrt(abar_t)) = x0_k + sigma_k eps with
sigma_k = sqrt((1 - abar_t) / abar_t) / 2^k. The reference is therefore the data box-averaged to r_k
plus the same amount of white noise: both sides have one distribution when stages K..k are right,
so a stage whose score jumps above the coarser stages' is where quality is lost. Stage 0 compares
the final images with the data itself.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dvdp_hr.diffusion import DVDPSchedule

from .swd import SWDConfig, descriptors, swd_from_descriptors


# dvdp-math.md s3 at gamma = 1: the pixel-unit noise level of a stage-k state at time t
def pixel_noise_std(schedule: DVDPSchedule, t: int, stage: int) -> float:
    abar = float(schedule.abar[int(t)])
    return ((1 - abar) / abar) ** 0.5 / 2**stage


# dvdp-math.md s1/s3: y / (2^k sqrt(abar_t)) = x0_k + sigma_k eps
def state_to_pixels(schedule: DVDPSchedule, y: torch.Tensor, t: int, stage: int) -> torch.Tensor:
    return y.float() / (2**stage * float(schedule.abar[int(t)]) ** 0.5)


def uint8_to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    return torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def noised_reference(x0: torch.Tensor, schedule: DVDPSchedule, stage: int, t: int, keys, seed: int = 0) -> torch.Tensor:
    """Data [N, C, H, W] (full resolution, [-1, 1]) box-averaged to stage `stage` plus sigma_k white
    noise, each image's noise from a generator seeded by its key."""
    x0_k = F.avg_pool2d(x0, 2**stage) if stage else x0
    sigma = pixel_noise_std(schedule, t, stage) if stage else 0.0
    noise = torch.stack([torch.randn(x0_k.shape[1:], generator=torch.Generator().manual_seed(
        (seed * 7919 + int(k) * 16 + stage) % 2**63)) for k in keys])
    return x0_k + sigma * noise


class StageDescriptors:
    """SWD descriptors per stage for one image set (generated or reference), in key order."""

    def __init__(self, schedule: DVDPSchedule, cfg: SWDConfig, channels: int = 3):
        self.schedule, self.cfg, self.channels = schedule, cfg, channels
        self.times: dict[int, int] = {}
        self.levels: dict[int, list[list[torch.Tensor]]] = {}
        self.keys: dict[int, list[torch.Tensor]] = {}

    def add(self, stage: int, t: int, pixels: torch.Tensor, keys) -> None:
        self.times[stage] = int(t)
        per_level = descriptors(pixels.cpu(), keys, self.cfg)
        bucket = self.levels.setdefault(stage, [[] for _ in per_level])
        for level, desc in enumerate(per_level):
            bucket[level].append(desc)
        self.keys.setdefault(stage, []).append(torch.tensor(list(keys)).repeat_interleave(self.cfg.per_image))

    def hook(self, seeds: list[int], stage: int, t: int, y: torch.Tensor) -> None:
        """The sampling engine's on_turning_point: a stage's state as it ends."""
        self.add(stage, t, state_to_pixels(self.schedule, y, t, stage), seeds)

    def add_final(self, seeds: list[int], images: np.ndarray) -> None:
        self.add(0, 0, uint8_to_pixels(images), seeds)

    def add_reference(self, keys, images: np.ndarray, stage_times: dict[int, int], seed: int = 0) -> None:
        """Data images (uint8 full resolution) at every stage the generated side has."""
        x0 = uint8_to_pixels(images)
        for stage, t in stage_times.items():
            self.add(stage, t, noised_reference(x0, self.schedule, stage, t, keys, seed), keys)

    def gathered(self, stage: int) -> list[torch.Tensor]:
        """Every rank's descriptors of one stage, per level, sorted by image key (collective)."""
        from dvdp_hr.distributed.collect import gather_rows

        keys = gather_rows(torch.cat(self.keys.get(stage, [torch.zeros(0, dtype=torch.long)])))
        order = torch.sort(keys, stable=True).indices
        levels = self.levels.get(stage) or [[] for _ in self.cfg.resolutions(self.schedule.stage_resolution(stage))]
        empty = torch.zeros(0, self.channels, self.cfg.patch, self.cfg.patch)  # a rank that drew nothing
        return [gather_rows(torch.cat(level) if level else empty)[order] for level in levels]


def stage_times(schedule: DVDPSchedule) -> dict[int, int]:
    """Stage -> t at which its state is compared: tau_k for k > 0, 0 for the final images."""
    return {0: 0, **{k: schedule.turning_points[k - 1] for k in range(1, schedule.num_stages)}}


def stage_report(generated: StageDescriptors, reference: StageDescriptors) -> dict:
    """{stage: {resolution, t, noise_std, swd_<res>..., swd_mean}} (collective: gathers descriptors)."""
    schedule, cfg, out = generated.schedule, generated.cfg, {}
    for stage, t in sorted(stage_times(schedule).items(), reverse=True):
        res = schedule.stage_resolution(stage)
        scores = swd_from_descriptors(generated.gathered(stage), reference.gathered(stage), cfg, res)
        out[stage] = {"resolution": res, "t": t, "noise_std": pixel_noise_std(schedule, t, stage) if stage else 0.0,
                      **scores}
    return out
