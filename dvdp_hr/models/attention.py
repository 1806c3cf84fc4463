"""Self-attention over feature maps. The one module in models/ allowed to import xformers.

Backend choice: SDPA (torch.nn.functional.scaled_dot_product_attention) by default; xformers'
memory_efficient_attention only when it imports AND a tiny real call runs on the tensors'
device (xformers 0.0.35 imports fine yet has no kernels for torch 2.11+cu130 or for CPU).
The probe runs once per device type and logs its choice in one line.
"""

import logging

import torch
import torch.nn.functional as F
from torch import nn

from .layers import group_norm

log = logging.getLogger(__name__)

BACKENDS = ("auto", "sdpa", "xformers")
_PROBED: dict[str, str | None] = {}  # device type -> None when xformers runs there, else reason


def _xformers_failure(device: torch.device) -> str | None:
    """Why xformers cannot run on `device` (None when a tiny real call succeeds)."""
    try:
        import xformers.ops as xops
    except Exception as err:  # ImportError, or a broken install raising anything at import
        return f"import failed ({type(err).__name__}: {err})"
    try:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        q = torch.zeros(1, 8, 1, 32, device=device, dtype=dtype)
        xops.memory_efficient_attention(q, q, q)
    except Exception as err:
        return f"kernel call failed on {device.type} ({type(err).__name__}: {str(err)[:160]})"
    return None


def xformers_failure(device: torch.device) -> str | None:
    """Cached probe: None when xformers works on this device type, else the reason."""
    if device.type not in _PROBED:
        reason = _xformers_failure(device)
        _PROBED[device.type] = reason
        if reason is None:
            log.info("attention backend: xformers memory_efficient_attention on %s", device.type)
        else:
            log.info("attention backend: SDPA on %s (xformers unusable: %s)", device.type, reason)
    return _PROBED[device.type]


def resolve_backend(requested: str, device: torch.device) -> str:
    """Map 'auto' | 'sdpa' | 'xformers' to the backend that will run on `device`."""
    if requested not in BACKENDS:
        raise ValueError(f"attention={requested!r} is not one of {BACKENDS}")
    if requested == "sdpa":
        return "sdpa"
    reason = xformers_failure(device)
    if requested == "xformers" and reason is not None:
        raise RuntimeError(f"attention='xformers' was forced but xformers cannot run on "
                           f"{device.type}: {reason}. Use attention='auto' or 'sdpa'.")
    return "xformers" if reason is None else "sdpa"


def multihead_attention(qkv: torch.Tensor, heads: int, backend: str) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head. qkv: [B, N, 3*C] tokens-last; returns [B, N, C]."""
    b, n, c3 = qkv.shape
    qkv = qkv.view(b, n, 3, heads, c3 // (3 * heads))
    if backend == "xformers":
        import xformers.ops as xops
        q, k, v = qkv.unbind(2)  # [B, N, heads, d]: xformers' native layout, no copy
        out = xops.memory_efficient_attention(q, k, v)
        return out.reshape(b, n, c3 // 3)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, heads, N, d] strided views
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, n, c3 // 3)


class SelfAttention(nn.Module):
    """ADM attention block: x + proj(attention(GroupNorm(x))), projection zero-initialised."""

    def __init__(self, channels: int, head_channels: int, norm_groups: int,
                 backend: str = "auto"):
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"head_channels={head_channels} must divide channels={channels}")
        self.heads = channels // head_channels
        self.requested_backend = backend
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self._backend: dict[str, str] = {}

    def backend_for(self, device: torch.device) -> str:
        if device.type not in self._backend:
            self._backend[device.type] = resolve_backend(self.requested_backend, device)
        return self._backend[device.type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm
        tokens = group_norm(x, n.num_groups, n.weight, n.bias, n.eps).flatten(2).transpose(1, 2)
        out = multihead_attention(self.qkv(tokens), self.heads, self.backend_for(x.device))
        return x + self.proj(out).transpose(1, 2).unflatten(2, (h, w))  # strided view, no copy
