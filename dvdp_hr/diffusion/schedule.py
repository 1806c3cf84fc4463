"""DVDPSchedule: global noise schedule, stages, turning points and attenuation (dvdp-math.md s2-s3, s9)."""
import math
from typing import Sequence

import torch
import torch.nn.functional as F

from . import ops
from .betas import BETA_SCHEDULES, RAMPS, attenuation, cumulative_alphas, logsnr_shift, make_betas

DEFAULT_TERMINAL_ABAR_BOUND = 1e-3
GRID_POLICIES = ("uniform", "logsnr")  # grid.step_grid; a schedule names its default


def pyramid_levels(resolution: int, root_resolution: int) -> int:
    """K with resolution = root_resolution * 2**K (the number of stage boundaries)."""
    ratio = resolution // max(root_resolution, 1)
    if root_resolution < 1 or ratio * root_resolution != resolution or ratio & (ratio - 1):
        raise ValueError(f"root_resolution must be resolution / 2**K for some K >= 0; got resolution="
                         f"{resolution}, root_resolution={root_resolution}")
    return ratio.bit_length() - 1


def batch_timesteps(t, batch: int) -> torch.Tensor:
    """t (int or LongTensor [B] / [1]) as a CPU LongTensor [batch], for indexing schedule tables."""
    t = torch.as_tensor(t, dtype=torch.long).reshape(-1).cpu()
    return t.expand(batch) if t.numel() == 1 else t


class DVDPSchedule:
    """Stage k (0 = finest) lives at resolution // 2**k and covers t in (tau_k, tau_{k+1}].

    All state tensors are in the orthonormal stage units of dvdp-math.md s1 (z0 = D_k x0).
    beta_schedule "cosine_shifted" / "cosine_interpolated" shift the cosine's log-SNR by
    2 log(resolution / shift_base) (s9; shift_base None = root_resolution). sampling_grid is the
    step-grid policy samplers use by default (grid.step_grid, dvdp-math.md s10).
    """

    def __init__(self, resolution: int, root_resolution: int, turning_points: Sequence[int] = (),
                 num_steps: int = 1000, beta_schedule: str = "linear", ramp: str = "cosine",
                 terminal_abar_bound: float = DEFAULT_TERMINAL_ABAR_BOUND, shift_base: int | None = None,
                 sampling_grid: str = "uniform"):
        self.resolution, self.root_resolution = int(resolution), int(root_resolution)
        self.num_steps, self.beta_schedule, self.ramp = int(num_steps), beta_schedule, ramp
        self.turning_points = [int(t) for t in turning_points]
        self.terminal_abar_bound = float(terminal_abar_bound)
        self.shift_base = None if shift_base is None else int(shift_base)
        self.sampling_grid = sampling_grid
        self._validate_arguments()
        self.shift = schedule_shift(self.beta_schedule, self.resolution, self.root_resolution, self.shift_base)
        self.betas, self.alphas, self.abar = cumulative_alphas(make_betas(beta_schedule, self.num_steps, self.shift))
        self.bounds = [0, *self.turning_points, self.num_steps]
        self.gammas = torch.stack([self._stage_gammas(k) for k in range(self.num_stages)])
        self._validate_terminal_snr()

    # ---- validation (friendly errors at the edge) ----
    def _validate_arguments(self) -> None:
        if self.num_steps < 2:
            raise ValueError(f"num_steps must be >= 2, got {self.num_steps}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {sorted(BETA_SCHEDULES)}, got {self.beta_schedule!r}")
        if self.ramp not in RAMPS:
            raise ValueError(f"ramp must be one of {list(RAMPS)}, got {self.ramp!r}")
        if self.sampling_grid not in GRID_POLICIES:
            raise ValueError(f"sampling_grid must be one of {list(GRID_POLICIES)}, got {self.sampling_grid!r}")
        if self.shift_base is not None and not 0 < self.shift_base <= self.resolution:
            raise ValueError(f"shift_base must be a resolution in (0, resolution={self.resolution}] (the "
                             f"resolution whose cosine schedule the shift reproduces), got {self.shift_base}")
        levels = pyramid_levels(self.resolution, self.root_resolution)
        if len(self.turning_points) != levels:
            raise ValueError(
                f"turning_points needs one entry per stage boundary: {self.resolution} -> "
                f"{self.root_resolution} has {levels}, got {len(self.turning_points)}")
        previous = 0
        for tp in self.turning_points:
            if not previous < tp < self.num_steps:
                raise ValueError(
                    f"turning_points must be strictly increasing inside (0, num_steps="
                    f"{self.num_steps}); got {self.turning_points}")
            previous = tp

    # dvdp-math.md s2: the root stage must start at (near) pure noise, abar'_T <= bound
    def _validate_terminal_snr(self) -> None:
        root_abar = self.shifted_abar(self.num_steps, self.num_stages - 1)
        if root_abar > self.terminal_abar_bound:
            raise ValueError(
                f"beta_schedule={self.beta_schedule!r} leaves the {self.root_resolution}px root stage "
                f"with abar'_T = {root_abar:.2e} > {self.terminal_abar_bound:g} (signal left at t = T "
                f"while sampling starts from pure noise). Fix: use beta_schedule='cosine' (or a shifted "
                f"cosine), more num_steps, or a larger root_resolution.")

    # ---- stages ----
    @property
    def num_stages(self) -> int:
        return len(self.turning_points) + 1

    def stage_resolution(self, k: int) -> int:
        self._check_stage(k)
        return self.resolution // 2**k

    def stage_bounds(self, k: int) -> tuple[int, int]:
        """Stage k covers t in (lo, hi]."""
        self._check_stage(k)
        return self.bounds[k], self.bounds[k + 1]

    def stage_of(self, t: int) -> int:
        """Stage of time t; at a turning point the finer stage (where gamma = 0)."""
        t = int(t)
        if not 0 <= t <= self.num_steps:
            raise ValueError(f"t must be in [0, {self.num_steps}], got {t}")
        return sum(1 for tp in self.turning_points if tp < t)

    def stage_of_batch(self, t) -> int:
        """Stage shared by every entry of t (int or LongTensor [B]); ValueError if they differ."""
        values = torch.as_tensor(t).reshape(-1)
        first, last = self.stage_of(values.min().item()), self.stage_of(values.max().item())
        if first != last:
            raise ValueError(f"t mixes stages {first} and {last}: a batch must hold one stage")
        return first

    def stage_probabilities(self) -> list[float]:
        return [(hi - lo) / self.num_steps for lo, hi in zip(self.bounds[:-1], self.bounds[1:])]

    def sample_timesteps(self, k: int, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        lo, hi = self.stage_bounds(k)
        return torch.randint(lo + 1, hi + 1, (batch,), generator=generator)

    def _check_stage(self, k: int) -> None:
        if not 0 <= k < self.num_stages:
            raise ValueError(f"stage must be in [0, {self.num_stages - 1}], got {k}")

    # dvdp-math.md s3: gamma falls from 1 at tau_k to 0 at tau_{k+1}; the root stage keeps gamma = 1
    def _stage_gammas(self, k: int) -> torch.Tensor:
        t = torch.arange(self.num_steps + 1, dtype=torch.float64)
        if k == self.num_stages - 1:
            return torch.ones_like(t)
        lo, hi = self.bounds[k], self.bounds[k + 1]
        return attenuation(((t - lo) / (hi - lo)).clamp(min=0), self.ramp)

    def gamma(self, t, k: int) -> torch.Tensor:
        return self.gammas[k][torch.as_tensor(t, dtype=torch.long).cpu()]

    # dvdp-math.md s6: abar'_t = 4^k abar_t / (1 + (4^k - 1) abar_t), the pixel-unit SNR view
    def shifted_abar(self, t: int, k: int) -> float:
        a, g = float(self.abar[t]), 4.0**k
        return g * a / (1 + (g - 1) * a)

    # dvdp-math.md s9: log-SNR of stage k's pixel-unit image, log(abar_t / (1 - abar_t)) + log 4^k
    def pixel_logsnr(self, t: int, k: int) -> float:
        a = float(self.abar[int(t)])
        return math.inf if a >= 1 else math.log(a / (1 - a)) + k * math.log(4)

    def stage_logsnr_range(self, k: int) -> tuple[float, float]:
        """(lowest, highest) pixel log-SNR stage k is trained on: at t = hi and t = lo + 1."""
        lo, hi = self.stage_bounds(k)
        return self.pixel_logsnr(hi, k), self.pixel_logsnr(lo + 1, k)

    # ---- forward process ----
    def stage_image(self, x0: torch.Tensor, k: int) -> torch.Tensor:
        """Box-averaged stage-k image in pixel units; accepts full-res or stage-res input."""
        size, target = x0.shape[-1], self.stage_resolution(k)
        if size == target:
            return x0
        if size != self.resolution:
            raise ValueError(f"x0 has resolution {size}; expected {self.resolution} (full) or {target} (stage {k})")
        return F.avg_pool2d(x0, 2**k)

    # dvdp-math.md s3: y_t = sqrt(abar_t) G_t z0 + sqrt(1 - abar_t) eps, G_t = P' + gamma_t Q'
    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        k = self.stage_of_batch(t)
        z0 = self.stage_image(x0, k) * 2**k
        if noise.shape != z0.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}; stage {k} needs {tuple(z0.shape)}")
        t = batch_timesteps(t, z0.shape[0])
        a = self.abar[t].sqrt()
        sig = (1 - self.abar[t]).sqrt()
        return ops.band_scale(z0, a, a * self.gamma(t, k)) + ops.per_sample(sig, z0) * noise

    # dvdp-math.md s6: y_t / sqrt(1 + (4^k - 1) abar_t) is a standard VP-DDPM state
    def input_scale(self, t) -> torch.Tensor:
        k = self.stage_of_batch(t)
        device = t.device if isinstance(t, torch.Tensor) else None
        t = torch.as_tensor(t, dtype=torch.long).reshape(-1).cpu()
        return (1 + (4.0**k - 1) * self.abar[t]).rsqrt().float().to(device)

    # ---- serialisation (export metadata, checkpoints) ----
    def to_dict(self) -> dict:
        return {"resolution": self.resolution, "root_resolution": self.root_resolution,
                "turning_points": list(self.turning_points), "num_steps": self.num_steps,
                "beta_schedule": self.beta_schedule, "ramp": self.ramp,
                "terminal_abar_bound": self.terminal_abar_bound, "shift_base": self.shift_base,
                "sampling_grid": self.sampling_grid}

    @classmethod
    def from_dict(cls, d: dict) -> "DVDPSchedule":
        return cls(**d)

    def __eq__(self, other) -> bool:
        return isinstance(other, DVDPSchedule) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"DVDPSchedule({args})"


def schedule_shift(beta_schedule: str, resolution: int, root_resolution: int, shift_base: int | None) -> float:
    """Log-SNR shift (nats) of a shifted schedule; 0 for the others (dvdp-math.md s9)."""
    if beta_schedule not in BETA_SCHEDULES or not BETA_SCHEDULES[beta_schedule][0]:
        return 0.0
    return logsnr_shift(resolution, shift_base or root_resolution)
