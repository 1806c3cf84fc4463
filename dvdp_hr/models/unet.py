"""ADM-style UNet (Dhariwal & Nichol 2021): residual blocks with timestep scale-shift,
GroupNorm + SiLU, self-attention at configured levels, residual up/down sampling, dropout,
zero-initialised output. Fully convolutional: one network serves every stage resolution.
A shared network also gets the DVDP stage through an embedding added to the t embedding."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import SelfAttention
from .layers import ResBlock, norm_silu, timestep_embedding
from .presets import UNetPreset


COMPILE_VARIANTS = 64  # distinct ResBlock shapes/variants of the largest preset, with margin


class UNetBlock(nn.Module):
    """One checkpointable unit: a residual block, then self-attention when configured."""

    def __init__(self, res: ResBlock, attn: SelfAttention | None = None, takes_skip: bool = False):
        super().__init__()
        self.res = res
        self.attn = attn
        self.takes_skip = takes_skip  # up path: concatenates a skip before the residual block

    def forward(self, x: torch.Tensor, emb_act: torch.Tensor) -> torch.Tensor:
        h = self.res(x, emb_act)
        return self.attn(h) if self.attn is not None else h


class UNet(nn.Module):
    def __init__(self, preset: UNetPreset, num_stages: int = 1, dropout: float = 0.0,
                 attention: str = "auto"):
        super().__init__()
        preset.validate()
        self.preset = preset
        self.grad_checkpointing = False  # default when forward() is not told (Denoiser tells it per stage)
        base, emb_ch = preset.base_channels, 4 * preset.base_channels
        self._make_block_args = dict(emb_ch=emb_ch, groups=preset.norm_groups, dropout=dropout,
                                     attention=attention)
        self.time_embed = nn.Sequential(nn.Linear(base, emb_ch), nn.SiLU(),
                                        nn.Linear(emb_ch, emb_ch))
        self.stage_embed = nn.Embedding(num_stages, emb_ch) if num_stages > 1 else None
        self.conv_in = nn.Conv2d(preset.in_channels, base, 3, padding=1)
        skip_channels = self._build_down(preset)
        ch = preset.level_channels[-1]
        self.mid = nn.ModuleList([self._block(ch, ch, True), self._block(ch, ch, False)])
        self._build_up(preset, skip_channels)
        self.norm_out = nn.GroupNorm(preset.norm_groups, base)
        self.conv_out = nn.Conv2d(base, preset.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _block(self, in_ch, out_ch, attn, resample=None, takes_skip=False) -> UNetBlock:
        a = self._make_block_args
        res = ResBlock(in_ch, out_ch, a["emb_ch"], a["groups"], a["dropout"], resample)
        att = (SelfAttention(out_ch, self.preset.head_channels, a["groups"], a["attention"])
               if attn else None)
        return UNetBlock(res, att, takes_skip)

    def _build_down(self, p: UNetPreset) -> list[int]:
        self.down = nn.ModuleList()
        skip_channels, ch = [p.base_channels], p.base_channels
        for level, out_ch in enumerate(p.level_channels):
            for _ in range(p.num_res_blocks):
                self.down.append(self._block(ch, out_ch, level in p.attn_levels))
                ch = out_ch
                skip_channels.append(ch)
            if level < p.num_levels - 1:
                self.down.append(self._block(ch, ch, False, resample="down"))
                skip_channels.append(ch)
        return skip_channels

    def _build_up(self, p: UNetPreset, skip_channels: list[int]) -> None:
        self.up = nn.ModuleList()
        ch = p.level_channels[-1]
        for level in reversed(range(p.num_levels)):
            out_ch = p.level_channels[level]
            for _ in range(p.num_res_blocks + 1):
                in_ch = ch + skip_channels.pop()
                self.up.append(self._block(in_ch, out_ch, level in p.attn_levels, takes_skip=True))
                ch = out_ch
            if level > 0:
                self.up.append(self._block(ch, ch, False, resample="up"))

    def blocks(self) -> list[UNetBlock]:
        return [*self.down, *self.mid, *self.up]

    def compile_blocks(self) -> None:
        """torch.compile per residual / attention module with symbolic spatial sizes: compiling
        the whole UNet re-traces on every shape guard. Weights keep channel counts static, so
        ResBlock.forward gets one graph per (channels, resampling) variant; dynamo counts them
        against one recompile limit per code object, hence the raise to COMPILE_VARIANTS."""
        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, name, max(getattr(config, name), COMPILE_VARIANTS))
        for block in self.blocks():
            block.res.compile(dynamic=True)
            if block.attn is not None:
                block.attn.compile(dynamic=True)

    @staticmethod
    def _run(block: UNetBlock, h: torch.Tensor, emb_act: torch.Tensor, ckpt: bool) -> torch.Tensor:
        if ckpt and torch.is_grad_enabled():
            return checkpoint(block, h, emb_act, use_reentrant=False)
        return block(h, emb_act)

    def embed(self, t: torch.Tensor, stage: torch.Tensor | None) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.preset.base_channels))
        if self.stage_embed is not None:
            if stage is None:
                raise ValueError("this UNet is shared across stages: pass stage=LongTensor[B]")
            emb = emb + self.stage_embed(stage)
        return F.silu(emb)  # every ResBlock's emb projection starts with SiLU: do it once

    def check_input(self, x: torch.Tensor) -> None:
        p = self.preset
        if x.ndim != 4 or x.shape[1] != p.in_channels:
            raise ValueError(f"expected input [B, {p.in_channels}, H, W], got {tuple(x.shape)}")
        m = p.min_resolution_multiple
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be a multiple of {m} "
                             f"({p.num_levels} levels); use a preset with fewer levels")

    def forward(self, x: torch.Tensor, t: torch.Tensor, stage: torch.Tensor | None = None,
                grad_checkpointing: bool | None = None) -> torch.Tensor:
        """grad_checkpointing: recompute each block in backward; None = self.grad_checkpointing."""
        self.check_input(x)
        ckpt = self.grad_checkpointing if grad_checkpointing is None else grad_checkpointing
        emb_act = self.embed(t, stage)
        h = self.conv_in(x)
        skips = [h]
        for block in self.down:
            h = self._run(block, h, emb_act, ckpt)
            skips.append(h)
        for block in self.mid:
            h = self._run(block, h, emb_act, ckpt)
        for block in self.up:
            if block.takes_skip:
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(block, h, emb_act, ckpt)
        return self.conv_out(norm_silu(h, self.norm_out))
