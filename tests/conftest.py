"""Shared session fixtures: ONE tiny shard set used by every training test."""
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """48 images (photo crops + synthetic) as 64/32/16 px shards of 12 samples."""
    from data_tools.make_shards import main as make_shards
    from dvdp_hr.train.demo_data import make_image_folder

    root = tmp_path_factory.mktemp("tiny_data")
    make_image_folder(str(root / "images"), count=48, size=64, seed=0)
    out = root / "shards"
    assert make_shards(["--source", str(root / "images"), "--out", str(out), "--resolutions", "64,32,16",
                        "--shard-size", "12", "--workers", "1", "--no-progress"]) == 0
    return out
