"""A rank's slice of one parameter's fp32 master weights (kept free of DeepSpeed imports)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Fragment:
    name: str
    start: int  # index of the slice's first element in the flattened parameter
    value: torch.Tensor  # 1-D fp32 view into the optimizer's partition (the step updates it in place)


class ModuleMasters:
    """The engine's master-weight interface over a plain fp32 module in one process: every
    parameter is one whole fragment (for EMAs of models trained without DeepSpeed, and tests)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.device = next(module.parameters()).device

    def local_master_fragments(self) -> list[Fragment]:
        return [Fragment(n, 0, p.data.view(-1)) for n, p in self.module.named_parameters() if p.requires_grad]
