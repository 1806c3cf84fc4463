"""Sliced Wasserstein distance (ProGAN): the pyramid matches the reference code, known cases."""
import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F

from dvdp_hr.metrics.swd import SWDConfig, laplacian_pyramid, swd

CFG = SWDConfig(per_image=64, directions=64, repeats=2)  # small for speed; defaults are ProGAN's 128/128/4
GAUSS = np.float32([[1, 4, 6, 4, 1], [4, 16, 24, 16, 4], [6, 24, 36, 24, 6], [4, 16, 24, 16, 4], [1, 4, 6, 4, 1]]) / 256


def _progan_pyramid(minibatch, num_levels):
    """progressive_growing_of_gans/metrics/sliced_wasserstein.py, generate_laplacian_pyramid."""
    def down(m):
        return scipy.ndimage.convolve(m, GAUSS[None, None], mode="mirror")[:, :, ::2, ::2]

    def up(m):
        res = np.zeros((m.shape[0], m.shape[1], m.shape[2] * 2, m.shape[3] * 2), m.dtype)
        res[:, :, ::2, ::2] = m
        return scipy.ndimage.convolve(res, GAUSS[None, None] * 4.0, mode="mirror")

    pyramid = [np.array(minibatch, dtype=np.float32)]
    for _ in range(1, num_levels):
        pyramid.append(down(pyramid[-1]))
        pyramid[-2] -= up(pyramid[-1])
    return pyramid


def _smooth_images(n, seed, size=32):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, size // 4, size // 4, generator=g)
    smooth = F.interpolate(base, size=size, mode="bicubic", align_corners=False) * 200
    return smooth + 5 * torch.randn(n, 3, size, size, generator=g)


def test_laplacian_pyramid_matches_the_progan_code():
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32)).astype(np.float32)
    for ref, ours in zip(_progan_pyramid(x, 3), laplacian_pyramid(torch.from_numpy(x.copy()), 3)):
        assert np.abs(ref - ours.numpy()).max() < 1e-3


def test_known_cases():
    a, b = _smooth_images(64, 1), _smooth_images(64, 2)
    identical = swd(a, a, CFG)
    same = swd(a, b, CFG)  # another draw of the same distribution: the sampling-noise floor
    blurred = swd(a, F.avg_pool2d(F.pad(b, (2, 2, 2, 2), mode="reflect"), 5, 1), CFG)
    noisy = swd(a, b + 25 * torch.randn(b.shape, generator=torch.Generator().manual_seed(3)), CFG)
    assert identical["swd_mean"] == 0 and set(identical) == {"swd_32", "swd_16", "swd_mean"}
    assert blurred["swd_32"] > 1.3 * same["swd_32"] and noisy["swd_32"] > 1.5 * same["swd_32"]
    assert swd(a, b, CFG) == same  # deterministic for a seed
    assert swd(a, b, SWDConfig(per_image=64, directions=64, repeats=2, seed=1)) != same
    # per-set channel normalisation (ProGAN): a global brightness change is invisible to SWD
    assert abs(swd(a, b + 30, CFG)["swd_mean"] - same["swd_mean"]) < 1e-3
