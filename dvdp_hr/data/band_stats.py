"""Per-coordinate variance of the detail band removed at each 2x resolution step (dvdp-math.md s8).

Stage k image (pixel units): x_k = avg_pool2d(x0, 2^k). Band removed at its turning point:
Q x_k = x_k - nearest_up(avg_pool2d(x_k, 2)). Q projects onto a subspace of dimension 3/4 of the
coordinates (each 2x2 block sums to zero), so its per-coordinate variance is
    var_pixel_k = E ||Q x_k||^2 / (3/4 * C * r_k^2),
the variance per orthonormal direction of the band; the noise has variance (1 - abar_t) per
direction, so abar_t var / (1 - abar_t) is the band's SNR. Orthonormal stage units: z_k = 2^k x_k,
hence var_orthonormal_k = 4^k var_pixel_k. The band is zero-mean within every block, so the
second moment is used (no data-set mean is subtracted).
"""

import torch
import torch.nn.functional as F

from dvdp_hr.diffusion.ops import detail
from dvdp_hr.diffusion.schedule import pyramid_levels

SCHEMA = "dvdp_hr.band_stats/v1"


class BandStats:
    """Accumulates band energies over batches of full-resolution pixel-unit images."""

    def __init__(self, resolution: int, min_resolution: int):
        levels = pyramid_levels(resolution, min_resolution)
        if min_resolution < 1 or resolution != min_resolution << levels or levels < 1:
            raise ValueError(
                f"resolutions {resolution} -> {min_resolution}: need a power-of-two ratio >= 2"
            )
        self.resolution, self.levels = resolution, levels
        self.energy = torch.zeros(levels, dtype=torch.float64)
        self.dims = torch.zeros(levels, dtype=torch.float64)
        self.num_images = 0

    # dvdp-math.md s8: accumulate ||Q x_k||^2 and the band dimension for every stage k
    def update(self, images: torch.Tensor) -> None:
        if (
            images.dim() != 4
            or images.shape[-1] != self.resolution
            or images.shape[-2] != self.resolution
        ):
            raise ValueError(
                f"expected [B, C, {self.resolution}, {self.resolution}], got {tuple(images.shape)}"
            )
        x = images.to(torch.float64)
        for k in range(self.levels):
            self.energy[k] += detail(x).square().sum()  # Q' of dvdp-math.md s1
            self.dims[k] += 0.75 * x.numel()
            x = F.avg_pool2d(x, 2)
        self.num_images += images.shape[0]

    def result(self) -> dict:
        """The band_stats.json schema (without file provenance)."""
        bands = []
        for k in range(self.levels):
            var_pixel = float(self.energy[k] / self.dims[k]) if self.num_images else float("nan")
            bands.append(
                {
                    "from": self.resolution >> k,
                    "to": self.resolution >> (k + 1),
                    "stage": k,
                    "var_pixel": var_pixel,
                    "var_orthonormal": 4.0**k * var_pixel,
                }
            )
        return {
            "schema": SCHEMA,
            "resolutions": [self.resolution >> k for k in range(self.levels + 1)],
            "bands": bands,
            "num_images": self.num_images,
        }


def band_variances(images: torch.Tensor, min_resolution: int) -> dict:
    """band_stats.json-style dict for a batch [B, C, R, R] of pixel-unit images in [-1, 1]."""
    stats = BandStats(images.shape[-1], min_resolution)
    stats.update(images)
    return stats.result()
