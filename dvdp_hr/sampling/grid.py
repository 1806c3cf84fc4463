"""PNG grid of uint8 images (the bytes the sample folder holds)."""
from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image


def save_grid(images: list[np.ndarray], path: str) -> str:
    """uint8 HWC images in a grid of ceil(sqrt(N)) columns, white where a row is short."""
    h, w, c = images[0].shape
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    grid = np.full((rows * h, cols * w, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, cols)
        grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = img
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid.squeeze(-1) if c == 1 else grid).save(path)
    return path
