"""The demo's data: random crops of the photographs bundled with scikit-image, a training set
written as an image folder and sharded by make_shards (64/32/16 px), and two held-out sets (other
crops) for the metrics and their real-vs-real floor."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from dvdp_hr.train.demo_data import photo_crops

RESOLUTIONS = "64,32,16"
TRAIN_SEED, HELDOUT_SEED, FLOOR_SEED = 1, 2, 3


def write_folder(images: np.ndarray, folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(os.path.join(folder, f"img{i:05d}.png"))
    return folder


def make_training_shards(data_dir: str, count: int, workers: int = 2) -> str:
    """Photo crops -> data_dir/images -> data_dir/shards (kept when already complete)."""
    from data_tools.make_shards import main as make_shards

    shards = os.path.join(data_dir, "shards")
    if os.path.isfile(os.path.join(shards, "manifest.json")):
        return shards
    folder = write_folder(photo_crops(count, 64, TRAIN_SEED), os.path.join(data_dir, "images"))
    # >= 2 shards per loader slot of 2 ranks, so both ranks read disjoint shards (dvdp_hr.train.validate)
    code = make_shards(["--source", folder, "--out", shards, "--resolutions", RESOLUTIONS,
                        "--num-shards", "16", "--workers", str(workers)])
    if code:
        raise RuntimeError(f"make_shards exited {code}")
    return shards


def heldout(count: int, data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint sets of `count` held-out crops (uint8 NHWC): the reference and the floor set.
    The reference is also written to data_dir/heldout (e.g. for `dvdp-hr ref-stats`)."""
    reference, floor = photo_crops(count, 64, HELDOUT_SEED), photo_crops(count, 64, FLOOR_SEED)
    write_folder(reference, os.path.join(data_dir, "heldout"))
    return reference, floor


def band_variances(shards: str) -> list[float]:
    """Orthonormal band variances of the training shards (data_tools/band_stats.py's measure)."""
    from data_tools.band_stats import measure

    return [band["var_orthonormal"] for band in measure(Path(shards), 100_000)["bands"]]
