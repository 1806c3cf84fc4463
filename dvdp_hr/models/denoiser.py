"""Denoiser: UNet(s) + DVDP wrapper. Applies the input normalisation of dvdp-math.md s6,
routes a one-stage batch to the network serving that stage, and presents the sampler's
contract (x0 estimate, pixel units, stage resolution) through predict_x0."""

import torch
from torch import nn

from dvdp_hr.diffusion import DVDPSchedule, prediction_to_x0

from .config import ModelConfig
from .presets import get_preset
from .unet import UNet


class Denoiser(nn.Module):
    def __init__(self, config: ModelConfig, schedule: DVDPSchedule, networks: list[UNet]):
        super().__init__()
        self.config = config
        self.schedule = schedule
        self.networks = nn.ModuleList(networks)  # one module tree: one optimizer / engine
        # A micro-batch holds one stage (its t), so checkpointing is decided per call by that stage.
        self.checkpointed = config.checkpointed_stages(schedule.num_stages)

    def stage_modules(self, k: int) -> UNet:
        """The network that serves stage k (ZeRO-3 leaf handling, per-stage export)."""
        if not 0 <= k < self.schedule.num_stages:
            raise ValueError(f"stage must be in [0, {self.schedule.num_stages - 1}], got {k}")
        return self.networks[0] if self.config.mode == "shared" else self.networks[k]

    def _check_resolution(self, y_t: torch.Tensor, k: int) -> None:
        size = self.schedule.stage_resolution(k)
        if tuple(y_t.shape[-2:]) != (size, size):
            raise ValueError(f"y_t is {tuple(y_t.shape[-2:])} but t lies in stage {k} "
                             f"({size}x{size}); make y_t with schedule.q_sample(x0, t, noise)")

    @staticmethod
    def _batch_t(y_t: torch.Tensor, t) -> torch.Tensor:
        """t as a CPU LongTensor [B]: stage lookups on it never wait for the GPU (pass CPU t to avoid a sync)."""
        t = torch.as_tensor(t, dtype=torch.long).reshape(-1).cpu()
        if t.numel() == 1:
            return t.expand(len(y_t))
        if t.numel() != len(y_t):
            raise ValueError(f"t has {t.numel()} entries for a batch of {len(y_t)}; pass one "
                             f"timestep per image (LongTensor[B]) or a single int")
        return t

    # dvdp-math.md s6: y_t / sqrt(1 + (4^k - 1) abar_t) is a standard VP-DDPM state
    def forward(self, y_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Raw network output in the prediction's space (input for training_loss)."""
        t = self._batch_t(y_t, t)
        k = self.schedule.stage_of_batch(t)
        self._check_resolution(y_t, k)
        # a small host table lookup; the copy is staged at once and does not wait for the device
        scale = self.schedule.input_scale(t).to(dtype=y_t.dtype).to(device=y_t.device, non_blocking=True)
        x = y_t * scale.view(-1, 1, 1, 1)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t = t.to(y_t.device, non_blocking=True)
        stage = torch.full_like(t, k) if self.config.mode == "shared" else None
        return self.stage_modules(k)(x, t, stage, grad_checkpointing=self.checkpointed[k])

    def predict_x0(self, y_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 estimate in pixel units at the stage resolution (the sampler's contract)."""
        output = self(y_t, t).to(y_t.dtype)
        t = self._batch_t(y_t, t)
        return prediction_to_x0(self.schedule, output, y_t, t, self.config.prediction)


def _stage_preset_names(cfg: ModelConfig, num_stages: int) -> list[str]:
    if cfg.mode == "shared":
        return [cfg.preset]
    names = cfg.stage_presets or [cfg.preset] * num_stages
    if len(names) != num_stages:
        raise ValueError(f"model.stage_presets has {len(names)} entries but the schedule has "
                         f"{num_stages} stages; give one preset per stage, finest first")
    return names


def _check_runs_at(name: str, resolutions: list[int]) -> None:
    multiple = get_preset(name).min_resolution_multiple
    bad = [r for r in resolutions if r % multiple]
    if bad:
        raise ValueError(f"preset {name!r} needs resolutions divisible by {multiple}, but the "
                         f"schedule uses {bad}; pick a preset with fewer levels")


def build_denoiser(cfg: ModelConfig, schedule: DVDPSchedule) -> Denoiser:
    cfg.validate()
    names = _stage_preset_names(cfg, schedule.num_stages)
    stage_res = [schedule.stage_resolution(k) for k in range(schedule.num_stages)]
    networks = []
    for i, name in enumerate(names):
        _check_runs_at(name, stage_res if cfg.mode == "shared" else [stage_res[i]])
        stages = schedule.num_stages if cfg.mode == "shared" else 1
        net = UNet(get_preset(name), num_stages=stages, dropout=cfg.dropout,
                   attention=cfg.attention)
        if cfg.channels_last:
            net.to(memory_format=torch.channels_last)
        if cfg.compile:
            net.compile_blocks()
        networks.append(net)
    return Denoiser(cfg, schedule, networks)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
