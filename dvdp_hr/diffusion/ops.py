"""Orthonormal 2x down/up operators and the low-pass / detail projectors (dvdp-math.md s1).

All functions act on the last two dimensions of a tensor [..., H, W] and are linear.
"""
import torch
import torch.nn.functional as F


def _as_4d(x: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
    shape = x.shape
    return x.reshape(-1, 1, shape[-2], shape[-1]), shape


# dvdp-math.md s1: D_k x = 2^k * avg_pool2d(x, 2^k)  (D = D_1 keeps white noise white)
def down(x: torch.Tensor, levels: int = 1) -> torch.Tensor:
    if levels == 0:
        return x
    f = 2**levels
    x4, shape = _as_4d(x)
    y = F.avg_pool2d(x4, f) * f
    return y.reshape(*shape[:-2], shape[-2] // f, shape[-1] // f)


# dvdp-math.md s1: U y = nearest_upsample(y, 2) / 2, the adjoint of D (D U = I); k levels: U^k
def up(y: torch.Tensor, levels: int = 1) -> torch.Tensor:
    if levels == 0:
        return y
    f = 2**levels
    y4, shape = _as_4d(y)
    x = F.interpolate(y4, scale_factor=f, mode="nearest") / f
    return x.reshape(*shape[:-2], shape[-2] * f, shape[-1] * f)


# dvdp-math.md s1: P = U D, the orthogonal projector onto images constant on 2x2 blocks
def lowpass(x: torch.Tensor) -> torch.Tensor:
    return up(down(x))


# dvdp-math.md s1: Q = I - P, the detail band removed at the next turning point
def detail(x: torch.Tensor) -> torch.Tensor:
    return x - lowpass(x)


# Applies a_P P + a_Q Q (per-sample scalars a_P, a_Q of shape [B] or floats), the form every
# posterior and attenuation coefficient in dvdp-math.md s3/s5 takes.
def band_scale(x: torch.Tensor, a_low, a_detail) -> torch.Tensor:
    if _identical(a_low, a_detail):  # decided on the (CPU) coefficients: no device sync
        return per_sample(a_low, x) * x
    a_low, a_detail = per_sample(a_low, x), per_sample(a_detail, x)
    return a_detail * x + (a_low - a_detail) * lowpass(x)


def _identical(a, b) -> bool:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return a.shape == b.shape and a.device == b.device and torch.equal(a, b)


# Coefficients (float64 schedule tables, per-sample [B] or scalar) cast to x's dtype/device, broadcastable.
# The host-to-device copy does not block: a small pageable source is staged at once, so the host
# never waits for the device's queue here.
def per_sample(a, x: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(a).to(dtype=x.dtype).to(device=x.device, non_blocking=True)
    return a.reshape(-1, *([1] * (x.dim() - 1))) if a.dim() == 1 else a
