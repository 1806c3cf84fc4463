"""UNet building blocks: timestep embedding and the ADM residual block with scale-shift."""

import math

import torch
import torch.nn.functional as F
from torch import nn


# Sinusoidal embedding of DDPM/ADM (Vaswani et al. positional encoding over the timestep):
# [cos(t * f_i), sin(t * f_i)], f_i = max_period ** (-i / half).
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None,
               bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """F.group_norm kept in x's dtype under autocast (statistics still accumulate in fp32
    inside the kernel). Autocast would upcast a bf16 activation to fp32 and return fp32: two
    extra casts and twice the memory traffic on every norm of the network."""
    low_precision = x.dtype in (torch.bfloat16, torch.float16)
    if not (low_precision and torch.is_autocast_enabled(x.device.type)):
        return F.group_norm(x, num_groups, weight, bias, eps)
    with torch.autocast(x.device.type, enabled=False):
        weight = weight.to(x.dtype) if weight is not None else None
        bias = bias.to(x.dtype) if bias is not None else None
        return F.group_norm(x, num_groups, weight, bias, eps)


def norm_silu(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    return F.silu(group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps))


def group_norm_scale_shift(x: torch.Tensor, norm: nn.GroupNorm, scale: torch.Tensor,
                           shift: torch.Tensor) -> torch.Tensor:
    """GroupNorm(x) * (1 + scale) + shift in ONE group_norm kernel.

    Groups never cross samples, so folding the batch into channels ([1, B*C, H, W] with B*G
    groups) lets the per-sample affine (norm.weight * (1 + scale), norm.bias * (1 + scale) +
    shift) ride inside group_norm instead of two extra full-size elementwise passes.
    """
    b, c, h, w = x.shape
    gain = 1 + scale  # [B, C]
    weight = (norm.weight * gain).reshape(-1)
    bias = torch.addcmul(shift, norm.bias, gain).reshape(-1)
    if not x.is_contiguous():  # channels_last: the fold would copy; use the plain form
        normed = group_norm(x, norm.num_groups, None, None, norm.eps)
        return torch.addcmul(bias.view(b, c, 1, 1).to(normed.dtype), normed,
                             weight.view(b, c, 1, 1).to(normed.dtype))
    out = group_norm(x.view(1, b * c, h, w), b * norm.num_groups, weight, bias, norm.eps)
    return out.view(b, c, h, w)


class ResBlock(nn.Module):
    """ADM residual block (use_scale_shift_norm=True), optionally resampling by 2 (BigGAN-style:
    the skip path is average-pooled / nearest-upsampled too). The output conv starts at zero, so
    every block starts as the identity (ADM)."""

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, norm_groups: int,
                 dropout: float = 0.0, resample: str | None = None):
        super().__init__()
        if resample not in (None, "down", "up"):
            raise ValueError(f"resample={resample!r} must be None, 'down' or 'up'")
        self.resample = resample
        self.dropout = dropout
        self.norm1 = nn.GroupNorm(norm_groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_ch, 2 * out_ch)
        self.norm2 = nn.GroupNorm(norm_groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb_act: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W]; emb_act: SiLU(embedding) [B, E], activated once for all blocks."""
        h = self.conv1(self._resample(norm_silu(x, self.norm1)))
        scale, shift = self.emb_proj(emb_act).chunk(2, dim=1)
        h = F.silu(group_norm_scale_shift(h, self.norm2, scale, shift))
        if self.dropout > 0:
            h = F.dropout(h, self.dropout, self.training)
        h = self.conv2(h)
        x = self._resample(x)
        return h.add_(self.skip(x) if self.skip is not None else x)  # conv output: safe in place
