"""Denoising networks: an ADM-style UNet shared across DVDP stages or one per stage.

Imports torch only; attention.py is the one module that may import xformers.
"""

from .config import ModelConfig
from .denoiser import Denoiser, build_denoiser, count_parameters
from .presets import MODEL_PRESETS, UNetPreset, get_preset
from .unet import UNet

__all__ = ["ModelConfig", "Denoiser", "build_denoiser", "count_parameters", "MODEL_PRESETS",
           "UNetPreset", "get_preset", "UNet"]
