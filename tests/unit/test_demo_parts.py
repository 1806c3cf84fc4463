"""The demo's accounting: FLOPs per stage and per run, loop time, curves and mosaics."""
from pathlib import Path

import numpy as np
import pytest
import torch

from dvdp_hr.demo import flops, plots, report
from dvdp_hr.train.config import load_config
from dvdp_hr.train.confutil import ConfigError
from dvdp_hr.train.setup import build_model, build_schedule

REPO = Path(__file__).resolve().parents[2]

BANDS = "schedule.band_stats.sigma_perp2=[0.05,0.3]"


def arm(name: str, *overrides):
    cfg = load_config(str(REPO / "configs" / f"demo_{name}.yaml"), list(overrides))
    schedule = build_schedule(cfg)
    torch.manual_seed(0)
    return cfg, schedule, build_model(cfg, schedule)


def test_the_arms_share_one_network_so_a_64px_image_costs_the_same():
    cfg, schedule, model = arm("dvdp", BANDS)
    per_stage = flops.training_flops_per_image(model, cfg, schedule)
    fcfg, fschedule, fmodel = arm("fixed")
    assert flops.training_flops_per_image(fmodel, fcfg, fschedule) == per_stage[:1]
    assert per_stage[0] > per_stage[1] > per_stage[2] > 0
    # convolutions dominate: each halving of the side costs ~1/4 (attention and the time MLP do not scale)
    assert per_stage[0] / per_stage[1] == pytest.approx(4, rel=0.02)


def test_fixed_sampling_flops_are_steps_times_one_forward():
    cfg, schedule, model = arm("fixed")
    with torch.no_grad():
        one = flops._counted(lambda: model(torch.zeros(1, 3, 64, 64), torch.tensor([500])))
    assert flops.sampling_flops_per_image(model, schedule, steps=7) == 7 * one


def test_images_and_flops_per_stage_from_loss_records():
    records = [{"step": 1, "stage": 0, "images": 16, "loss": 1.0}, {"step": 3, "stage": 0, "images": 64, "loss": 1.0},
               {"step": 2, "stage": 2, "images": 48, "loss": 1.0}]
    assert flops.images_per_stage(records, 3) == [32, 0, 32]
    assert flops.training_flops(records, [10, 5, 1]) == 32 * 10 + 32 * 1


def test_training_seconds_sum_the_stats_windows():
    stats = [{"step": 10, "images": 100, "img_per_s": 50.0}, {"step": 20, "images": 400, "img_per_s": 100.0},
             {"step": 20, "images": 400, "eval/swd": 3.0}]
    assert report.training_seconds(stats) == pytest.approx(2.0 + 3.0)


def test_smoothed_is_a_trailing_mean():
    assert plots.smoothed([1, 2, 3, 4], window=2).tolist() == [1.0, 1.5, 2.5, 3.5]


def test_tile_lays_images_out_row_by_row():
    images = np.arange(6, dtype=np.uint8).reshape(6, 1, 1, 1).repeat(3, axis=3)
    mosaic = plots.tile(images, columns=3)
    assert mosaic.shape == (2, 3, 3) and mosaic[:, :, 0].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_a_demo_run_directory_keeps_its_training_settings(tmp_path):
    from dvdp_hr.demo.pipeline import check_settings

    settings = {"images": 400, "train_photos": 128, "nproc": 2}
    check_settings(str(tmp_path), settings)
    check_settings(str(tmp_path), dict(settings))  # a rerun with the same settings resumes
    with pytest.raises(ConfigError, match="--images 400 --train-photos 128 --nproc 2. Rerun.*new folder"):
        check_settings(str(tmp_path), {**settings, "images": 800})


def test_a_folder_with_other_files_is_not_taken_for_a_demo(tmp_path):
    from dvdp_hr.demo.pipeline import check_settings

    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ConfigError, match="holds no demo.json"):
        check_settings(str(tmp_path), {"images": 400, "train_photos": 128, "nproc": 2})
