"""Multi-scale sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al. 2018, ProGAN,
appendix D; the reference code is progressive_growing_of_gans/metrics/sliced_wasserstein.py).

Per pyramid level (full resolution down to min_resolution), `per_image` random patch x patch
neighbourhoods of each image are descriptors; each set's descriptors are normalised per channel by
that set's own mean and std (so a global per-channel affine colour change is invisible to SWD: FID
sees it); the distance is the mean over `repeats` x `directions` random unit projections of the
1-D Wasserstein-1 distance between the sorted projections, times 1e3. Defaults are ProGAN's: 7x7
patches, 128 per image, 4 x 128 = 512 projections, levels down to 16 px.

Descriptor positions come from a generator seeded by (seed, image key, level), so an image gives
the same descriptors on any rank; the projections come from `seed` alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# 5x5 binomial filter of cv2.pyrDown / pyrUp (Burt & Adelson 1983), as in the ProGAN code
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
GAUSSIAN_5x5 = torch.outer(_BINOMIAL, _BINOMIAL) / 256.0


@dataclass(frozen=True)
class SWDConfig:
    patch: int = 7
    per_image: int = 128
    directions: int = 128
    repeats: int = 4
    min_resolution: int = 16
    seed: int = 0

    def resolutions(self, size: int) -> list[int]:
        out = [size]
        while out[-1] // 2 >= self.min_resolution:
            out.append(out[-1] // 2)
        return out


def _blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """5x5 binomial filter with mirror borders (scipy.ndimage 'mirror' = torch 'reflect')."""
    c = x.shape[1]
    kernel = (GAUSSIAN_5x5 * gain).to(x).expand(c, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=c)


# Burt & Adelson 1983: REDUCE = blur, keep every other pixel (cv2.pyrDown)
def pyr_down(x: torch.Tensor) -> torch.Tensor:
    return _blur(x)[..., ::2, ::2]


# Burt & Adelson 1983: EXPAND = zero-insert, blur with 4x the filter (cv2.pyrUp)
def pyr_up(x: torch.Tensor) -> torch.Tensor:
    up = torch.zeros(*x.shape[:-2], x.shape[-2] * 2, x.shape[-1] * 2, dtype=x.dtype, device=x.device)
    up[..., ::2, ::2] = x
    return _blur(up, gain=4.0)


# Burt & Adelson 1983: L_i = G_i - EXPAND(G_{i+1}); the last level is the low-pass residual G_n
def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    pyramid = [x.float()]
    for _ in range(1, levels):
        pyramid.append(pyr_down(pyramid[-1]))
        pyramid[-2] = pyramid[-2] - pyr_up(pyramid[-1])
    return pyramid


def _image_generator(seed: int, key: int, level: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + int(key) * 64 + level) % (2**63))


def _patches(image: torch.Tensor, count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """`count` random size x size neighbourhoods of one [C, H, W] image -> [count, C, size, size]
    (top-left corners uniform over the valid range, as ProGAN's centres in [half, H - half))."""
    (h, w) = image.shape[-2:]
    ys = torch.randint(0, h - size + 1, (count,), generator=generator).to(image.device)
    xs = torch.randint(0, w - size + 1, (count,), generator=generator).to(image.device)
    windows = image.unfold(1, size, 1).unfold(2, size, 1)  # [C, H-size+1, W-size+1, size, size], a view
    return windows[:, ys, xs].permute(1, 0, 2, 3)


def descriptors(images: torch.Tensor, keys, cfg: SWDConfig) -> list[torch.Tensor]:
    """Per level, [N * per_image, C, patch, patch] raw descriptors of images [N, C, H, W] (any scale)."""
    levels = len(cfg.resolutions(images.shape[-1]))
    if images.shape[-1] < cfg.patch:
        raise ValueError(f"images of {images.shape[-1]} px are smaller than the {cfg.patch} px patches")
    out = []
    for level, band in enumerate(laplacian_pyramid(images, levels)):
        out.append(torch.cat([_patches(band[i], cfg.per_image, cfg.patch, _image_generator(cfg.seed, k, level))
                              for i, k in enumerate(keys)]).cpu())
    return out


# ProGAN finalize_descriptors: per-channel standardisation over all neighbourhoods of one set
def normalise(desc: torch.Tensor) -> torch.Tensor:
    desc = desc.double()
    mean = desc.mean(dim=(0, 2, 3), keepdim=True)
    std = desc.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
    return ((desc - mean) / std.clamp(min=1e-12)).reshape(desc.shape[0], -1)  # float64: scores that do not
    # move with the thread count's float32 rounding (ProGAN used float32)


# ProGAN sliced_wasserstein: mean over random unit directions of mean |sort(A d) - sort(B d)|
def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: int, repeats: int,
                       generator: torch.Generator) -> float:
    results = []
    for _ in range(repeats):
        dirs = torch.randn(a.shape[1], directions, generator=generator, dtype=torch.float64)
        dirs = (dirs / dirs.norm(dim=0, keepdim=True)).to(a.dtype)
        proj_a = torch.sort(a @ dirs.to(a.device), dim=0).values
        proj_b = torch.sort(b @ dirs.to(b.device), dim=0).values
        results.append((proj_a - proj_b).abs().mean().item())
    return sum(results) / len(results)


def _equal_count(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator):
    """ProGAN compares equal numbers of descriptors: a random subset of the larger set."""
    n = min(len(a), len(b))
    pick = lambda d: d if len(d) == n else d[torch.randperm(len(d), generator=generator)[:n]]
    return pick(a), pick(b)


def swd_from_descriptors(desc_a: list[torch.Tensor], desc_b: list[torch.Tensor], cfg: SWDConfig,
                         resolution: int) -> dict:
    """{'swd_<res>': ..., 'swd_mean': ...} (x 1e3, as ProGAN reports)."""
    generator = torch.Generator().manual_seed(cfg.seed)
    out = {}
    for res, a, b in zip(cfg.resolutions(resolution), desc_a, desc_b):
        a, b = _equal_count(normalise(a), normalise(b), generator)
        out[f"swd_{res}"] = 1e3 * sliced_wasserstein(a, b, cfg.directions, cfg.repeats, generator)
    out["swd_mean"] = sum(out.values()) / len(out)
    return out


def swd(images_a: torch.Tensor, images_b: torch.Tensor, cfg: SWDConfig = SWDConfig()) -> dict:
    """SWD between two image sets [N, C, H, W] of one resolution (any common scale), one process."""
    if images_a.shape[1:] != images_b.shape[1:]:
        raise ValueError(f"image shapes differ: {tuple(images_a.shape[1:])} vs {tuple(images_b.shape[1:])}")
    desc_a = descriptors(images_a, range(len(images_a)), cfg)
    desc_b = descriptors(images_b, range(len(images_b)), cfg)  # same positions: identical sets give 0
    return swd_from_descriptors(desc_a, desc_b, cfg, images_a.shape[-1])
