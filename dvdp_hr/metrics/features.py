"""Image features for FID/KID exactly as clean-fid computes them, and where the images come from.

clean-fid's "clean" mode (Parmar et al. 2022, cleanfid/fid.py + features.py + resize.py): an RGB uint8
image is resized to 299x299 by PIL bicubic on each channel in float ('F' mode), clipped to [0, 255],
kept in float32 (no quantisation after resizing), and fed to the TorchScript Inception of StyleGAN2-ADA
(inception-2015-12-05.pt), which takes [0, 255] and normalises with (x - 128) / 128 itself. We call
clean-fid's own resize function, so folder and in-memory images give clean-fid's features.
"""
from __future__ import annotations

import functools
import os
import warnings

import numpy as np
import torch

from .errors import EvaluationError

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION_ENV = "DVDP_INCEPTION"
CLEANFID_DEFAULT = os.path.join("/tmp", INCEPTION_FILE)  # where clean-fid itself looks (and downloads to)
INPUT_SIZE = 299


def inception_path(flag: str | None = None) -> str:
    """The Inception weights: --inception PATH, else $DVDP_INCEPTION, else clean-fid's /tmp copy."""
    candidates = [(flag, "--inception"), (os.environ.get(INCEPTION_ENV), f"${INCEPTION_ENV}"),
                  (CLEANFID_DEFAULT, "clean-fid's default location")]
    for path, origin in candidates:
        if not path:
            continue
        path = os.path.join(path, INCEPTION_FILE) if os.path.isdir(path) else path
        if os.path.isfile(path):
            return path
        if origin != "clean-fid's default location":
            raise EvaluationError(_missing_weights(f"{path} (from {origin}) does not exist"))
    raise EvaluationError(_missing_weights(f"no --inception, no ${INCEPTION_ENV}, no {CLEANFID_DEFAULT}"))


def _missing_weights(reason: str) -> str:
    return (f"Inception weights not found: {reason}. FID and KID need {INCEPTION_FILE} (the TorchScript "
            f"Inception-v3 of StyleGAN2-ADA that clean-fid uses, ~95 MB). On a machine with network access: "
            f"`wget {INCEPTION_URL}`, copy it to shared storage, and pass `--inception /path/to/{INCEPTION_FILE}` "
            f"or set {INCEPTION_ENV}=/path/to/{INCEPTION_FILE} (clean-fid itself reads {CLEANFID_DEFAULT}). "
            f"SWD needs no weights: `dvdp-hr swd`.")


class CleanInception(torch.nn.Module):
    """clean-fid's InceptionV3W in clean mode (cleanfid/inception_torchscript.py), loaded from a path:
    [B, 3, 299, 299] in [0, 255] -> [B, 2048] pool features."""

    def __init__(self, path: str, device="cpu"):
        super().__init__()
        with warnings.catch_warnings():  # the file is TorchScript: torch.jit.load is the only loader
            warnings.simplefilter("ignore", FutureWarning)
            self.base = torch.jit.load(path, map_location=device).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.layers.forward((x - 128) / 128).reshape(x.shape[0], -1)


def load_inception(flag: str | None, device) -> CleanInception:
    return CleanInception(inception_path(flag), device).to(device)


@functools.lru_cache(maxsize=1)
def _clean_resizer():
    from cleanfid.resize import build_resizer

    return build_resizer("clean")


def clean_resize(pixels: np.ndarray) -> np.ndarray:
    """uint8 HWC RGB -> float32 299x299x3 in [0, 255], clean-fid's own function."""
    return _clean_resizer()(pixels)


def to_input(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 HWC images -> the extractor's input [B, 3, 299, 299] float32 (clean-fid's ResizeDataset)."""
    return torch.from_numpy(np.stack([clean_resize(_rgb(img)) for img in images]).transpose(0, 3, 1, 2).copy())


def _rgb(pixels: np.ndarray) -> np.ndarray:
    """Grey or RGBA uint8 arrays as clean-fid's PIL convert('RGB') would give them."""
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return pixels
    from PIL import Image

    return np.asarray(Image.fromarray(pixels.squeeze()).convert("RGB"))


@torch.no_grad()
def extract(extractor, images: list[np.ndarray], device) -> torch.Tensor:
    """Features [B, D] (float32, on `device`) of uint8 HWC images, in one call of the extractor."""
    return extractor(to_input(images).to(device)).float()
