"""Exponential moving averages of the weights, one full fp32 copy per decay on every rank.

Under ZeRO-3 the live parameters are partitioned; `update` reads them inside the engine's
`gathered` context, a bounded chunk at a time, so every rank sees (and averages) full values.
All ranks therefore hold identical EMA weights and rank 0 alone writes them.
"""
from __future__ import annotations

import copy
import os

import torch
from safetensors.torch import load_file, save_file

CHUNK_ELEMENTS = 50_000_000  # parameters gathered at once under ZeRO-3


def ema_filename(decay: float) -> str:
    return f"ema-{decay:g}.safetensors"


def _numel(p: torch.Tensor) -> int:
    return int(getattr(p, "ds_numel", p.numel()))


def _chunks(named_params):
    chunk, size = [], 0
    for item in named_params:
        chunk.append(item)
        size += _numel(item[1])
        if size >= CHUNK_ELEMENTS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class EMA:
    def __init__(self, model: torch.nn.Module, decays):
        """`model` must hold full weights (call before the engine partitions it)."""
        self.decays = [float(d) for d in decays]
        self.models = {d: copy.deepcopy(model).float().eval().requires_grad_(False) for d in self.decays}

    @torch.no_grad()
    def update(self, live: torch.nn.Module, gathered) -> None:
        """ema = decay * ema + (1 - decay) * live, for every decay; `gathered(params)` is the
        engine's context that materialises partitioned parameters."""
        targets = {d: dict(m.named_parameters()) for d, m in self.models.items()}
        for chunk in _chunks(list(live.named_parameters())):
            with gathered([p for _, p in chunk]):
                for name, param in chunk:
                    value = param.detach().float().cpu() if param.device.type != "cpu" else param.detach().float()
                    for d, params in targets.items():
                        target = params[name]
                        target.lerp_(value.to(target.device), 1.0 - d)
        for m in self.models.values():
            for buf, live_buf in zip(m.buffers(), live.buffers()):
                buf.copy_(live_buf)

    def save(self, ckpt_dir: str) -> None:
        for d, m in self.models.items():
            state = {k: v.detach().contiguous() for k, v in m.state_dict().items()}
            save_file(state, os.path.join(ckpt_dir, ema_filename(d)))

    def load(self, ckpt_dir: str) -> None:
        for d, m in self.models.items():
            path = os.path.join(ckpt_dir, ema_filename(d))
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} missing: the checkpoint has no EMA for decay {d:g} "
                                        f"(ema.decays must match the run being resumed).")
            m.load_state_dict(load_file(path), strict=True)
