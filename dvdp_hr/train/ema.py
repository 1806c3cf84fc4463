"""Exponential moving averages of the weights, one full fp32 copy per decay on every rank.

The copies live on the training device (no per-step GPU->CPU traffic). `update` averages the
optimizer's fp32 master weights (not the bf16 module weights of a bf16 run), which the engine
assembles one parameter at a time on every rank, so all ranks hold identical EMA weights and
rank 0 alone writes them (fp32, CPU tensors, safetensors).
"""
from __future__ import annotations

import copy
import os
from typing import Iterable

import torch
from safetensors.torch import load_file, save_file


def ema_filename(decay: float) -> str:
    """repr is exact and round-trips: 0.9999999 and 0.99999995 get different files."""
    return f"ema-{float(decay)!r}.safetensors"


def _distinct_decays(decays) -> list[float]:
    values = [float(d) for d in decays]
    if not values:
        raise ValueError("ema.decays is empty: give at least one decay, e.g. ema.decays=[0.9999].")
    duplicates = sorted({d for d in values if values.count(d) > 1})
    if duplicates:
        raise ValueError(f"ema.decays has duplicates {duplicates} (from {list(decays)!r}); each EMA needs "
                         f"its own decay, remove the repeated entries.")
    return values


class EMA:
    def __init__(self, model: torch.nn.Module, decays, device: torch.device | str = "cpu"):
        """`model` must hold full weights (call before the engine partitions it)."""
        self.decays = _distinct_decays(decays)
        self.models = {d: copy.deepcopy(model).float().eval().requires_grad_(False) for d in self.decays}
        # name -> parameter, built once (to() and load_state_dict update the same Parameter objects)
        self._params = {d: dict(m.named_parameters()) for d, m in self.models.items()}
        self.to(device)

    def to(self, device: torch.device | str) -> "EMA":
        self.device = torch.device(device)
        for m in self.models.values():
            m.to(self.device)
        return self

    @torch.no_grad()
    def update(self, master_params: Iterable[tuple[str, torch.Tensor]], buffers: Iterable[torch.Tensor]) -> None:
        """ema = decay * ema + (1 - decay) * master, for every decay. `master_params` yields
        (name, full fp32 value) of each trained parameter (frozen ones never move, so their EMA
        stays their initial value); under ZeRO it is collective and must be consumed to the end."""
        for name, value in master_params:
            value = value.to(self.device, torch.float32)
            for d, params in self._params.items():
                params[name].lerp_(value, 1.0 - d)
        buffers = list(buffers)
        for m in self.models.values():
            for buf, live_buf in zip(m.buffers(), buffers):
                buf.copy_(live_buf)

    def state_dicts(self, keep: bool) -> dict[str, dict[str, torch.Tensor]] | None:
        """{file name: full fp32 CPU state} of every EMA, a snapshot safe to write from another
        thread. Collective (every rank calls it); only ranks with keep=True get the dicts."""
        if not keep:
            return None
        return {ema_filename(d): {k: v.detach().to("cpu", torch.float32, copy=True).contiguous()
                                  for k, v in m.state_dict().items()} for d, m in self.models.items()}

    def save(self, ckpt_dir: str) -> None:
        for name, state in self.state_dicts(keep=True).items():
            save_file(state, os.path.join(ckpt_dir, name))

    def load(self, ckpt_dir: str) -> None:
        for d, m in self.models.items():
            path = os.path.join(ckpt_dir, ema_filename(d))
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} missing: the checkpoint has no EMA for decay {d!r} "
                                        f"(ema.decays must match the run being resumed).")
            m.load_state_dict(load_file(path, device=str(self.device)), strict=True)
