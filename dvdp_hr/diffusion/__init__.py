"""The DVDP process as a pure library: operators, schedule, process, samplers and cost model.

Imports torch only (no torch.distributed, deepspeed, environment or files).
"""
from .cost import band_snr, cost_fraction, propose_turning_points
from .ops import detail, down, lowpass, up
from .process import (downsample_at_turning_point, kernel_coefficients, posterior_coefficients,
                      prediction_target, prediction_to_x0, q_step, step_coefficients, training_loss,
                      upsample_at_turning_point)
from .sampler import reverse_walk, sample, step_grid
from .schedule import DVDPSchedule

__all__ = [
    "DVDPSchedule", "sample", "step_grid", "reverse_walk", "prediction_to_x0", "prediction_target", "training_loss",
    "kernel_coefficients", "posterior_coefficients", "step_coefficients", "q_step",
    "downsample_at_turning_point", "upsample_at_turning_point", "down", "up", "lowpass", "detail",
    "cost_fraction", "propose_turning_points", "band_snr",
]
