"""A small image folder for the demo and the tests: skimage's bundled photos (random crops) and
synthetic smooth colour fields. Deterministic for a given seed."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def _photos() -> list[np.ndarray]:
    try:
        from skimage import data
    except ImportError:
        return []
    photos = []
    for name in PHOTOS:
        try:
            photos.append(np.asarray(getattr(data, name)())[..., :3])
        except Exception:  # a photo missing from this skimage build: skip it
            continue
    return photos


def _crop(photo: np.ndarray, rng: np.random.Generator, size: int) -> Image.Image:
    h, w = photo.shape[:2]
    side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BICUBIC)


def _synthetic(rng: np.random.Generator, size: int) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.zeros((size, size, 3))
    for _ in range(3):  # a few coloured Gaussian blobs on a gradient
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.4)
        image += rng.uniform(0, 1, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
    image += rng.uniform(0, 0.5, 3) * xx[..., None]
    return Image.fromarray((np.clip(image / image.max(), 0, 1) * 255).astype(np.uint8))


def make_image_folder(folder: str, count: int = 64, size: int = 64, seed: int = 0) -> str:
    """Writes `count` PNGs of size x size: half photo crops, half synthetic (all synthetic without skimage)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = _photos()
    for i in range(count):
        use_photo = photos and i % 2 == 0
        image = _crop(photos[int(rng.integers(len(photos)))], rng, size) if use_photo else _synthetic(rng, size)
        image.save(os.path.join(folder, f"img{i:05d}.png"))
    return folder


def photo_crops(count: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """`count` random crops of skimage's bundled photographs as uint8 [count, size, size, 3] (the
    demo's real photographs only; bench/schedule_ab.py). Needs scikit-image."""
    photos = _photos()
    if not photos:
        raise RuntimeError("the demo's photographs come from scikit-image: pip install -e '.[demo]' (make demo does)")
    rng = np.random.default_rng(seed)
    return np.stack([np.asarray(_crop(photos[int(rng.integers(len(photos)))], rng, size)) for _ in range(count)])
