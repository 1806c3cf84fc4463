"""`dvdp-hr demo`: the whole pipeline on CPU in minutes: image folder -> shards -> a short
training run of configs/tiny_cpu.yaml -> a PNG grid of EMA samples."""
from __future__ import annotations

import os
from pathlib import Path

TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml"


def run_demo(run_dir: str, max_images: int = 6000, num_images: int = 256) -> int:
    from data_tools.make_shards import main as make_shards
    from dvdp_hr.train.config import load_config
    from dvdp_hr.train.demo_data import make_image_folder
    from dvdp_hr.train.loop import train

    data = os.path.join(run_dir, "data")
    shards = os.path.join(data, "shards")
    if not os.path.isfile(os.path.join(shards, "manifest.json")):
        make_image_folder(os.path.join(data, "images"), count=num_images, size=64)
        code = make_shards(["--source", os.path.join(data, "images"), "--out", shards, "--resolutions", "64,32,16",
                            "--shard-size", "64", "--workers", "1"])
        if code:
            return code
    half = max(max_images // 2, 1)
    cfg = load_config(str(TINY_CONFIG), [f"data.shards={shards}", f"train.max_images={max_images}",
                                         f"checkpoint.every_images={half}", f"logging.sample_every_images={half}",
                                         "logging.sample_steps=50"])
    code = train(cfg, run_dir)  # rerunning the demo resumes (or finds the run finished); draws final.png
    if code:
        return code
    grid = os.path.join(run_dir, "samples", "final.png")
    print(f"demo finished: samples in {grid}; stats in {os.path.join(run_dir, 'stats.jsonl')}")
    return 0
