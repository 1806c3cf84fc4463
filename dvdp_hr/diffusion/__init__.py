"""The DVDP process as a pure library: operators, schedule, process, samplers and cost model.

Imports torch only (no torch.distributed, deepspeed, environment or files).
"""
from .cost import band_snr, cost_fraction, propose_turning_points
from .ops import detail, down, lowpass, up
from .loss import LOSS_WEIGHTINGS, loss_weights, pixel_snr, training_loss
from .prediction import PREDICTIONS, prediction_target, prediction_to_x0
from .process import (downsample_at_turning_point, kernel_coefficients, posterior_coefficients, q_step,
                      step_coefficients, upsample_at_turning_point)
from .grid import parse_grid, stage_logsnr_spans, step_grid
from .sampler import reverse_walk, sample
from .schedule import DVDPSchedule

__all__ = [
    "DVDPSchedule", "sample", "step_grid", "reverse_walk", "prediction_to_x0", "prediction_target", "training_loss",
    "kernel_coefficients", "posterior_coefficients", "step_coefficients", "q_step",
    "downsample_at_turning_point", "upsample_at_turning_point", "down", "up", "lowpass", "detail",
    "cost_fraction", "propose_turning_points", "band_snr", "parse_grid", "stage_logsnr_spans",
    "LOSS_WEIGHTINGS", "loss_weights", "pixel_snr", "PREDICTIONS",
]
