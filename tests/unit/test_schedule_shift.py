"""Resolution-aware schedules and sampling-grid policies (dvdp-math.md s9, s10)."""
import math

import pytest
import torch

from dvdp_hr.diffusion import (DVDPSchedule, parse_grid, propose_turning_points, sample, stage_logsnr_spans,
                               step_grid)
from dvdp_hr.diffusion.cost import band_snr

FFHQ_BANDS = [0.0035, 0.0251, 0.192, 1.317]  # configs/ffhq1024.yaml's labelled estimates
TPS = {"cosine": [204, 468, 759, 904], "cosine_interpolated": [139, 261, 421, 584], "cosine_shifted": [8, 30, 93, 245]}


def real(beta_schedule: str) -> DVDPSchedule:
    return DVDPSchedule(1024, 64, TPS[beta_schedule], beta_schedule=beta_schedule)


def logsnr(s: DVDPSchedule, t: int) -> float:
    return math.log(float(s.abar[t] / (1 - s.abar[t])))


def test_shifted_cosine_is_the_cosine_moved_by_log_256():
    cos, shifted, interp = real("cosine"), real("cosine_shifted"), real("cosine_interpolated")
    assert shifted.shift == pytest.approx(math.log(256)) and cos.shift == 0.0
    for t in (1, 100, 500, 904, 999, 1000):
        assert logsnr(shifted, t) == pytest.approx(logsnr(cos, t) - math.log(256), abs=1e-6)
        assert logsnr(interp, t) == pytest.approx(logsnr(cos, t) - t / 1000 * math.log(256), abs=1e-6)
        # with base = the root, the 64 px root sees exactly a standard 64 px cosine in its pixel units
        assert shifted.pixel_logsnr(t, 4) == pytest.approx(logsnr(cos, t), abs=1e-6)
    for s in (shifted, interp):
        assert s.abar[0] == 1 and bool((s.abar[1:] < s.abar[:-1]).all()) and float(s.betas.max()) < 1


def test_interpolated_keeps_the_high_snr_end_the_full_shift_loses_it():
    assert real("cosine_interpolated").pixel_logsnr(1, 0) == pytest.approx(real("cosine").pixel_logsnr(1, 0), abs=0.01)
    assert real("cosine_shifted").pixel_logsnr(1, 0) < 4.6  # 1024 px never cleaner than SNR ~95


def test_shift_base_moves_the_shift_and_is_validated():
    s = DVDPSchedule(1024, 64, TPS["cosine_interpolated"], beta_schedule="cosine_interpolated", shift_base=256)
    assert s.shift == pytest.approx(2 * math.log(4))
    with pytest.raises(ValueError, match="shift_base"):
        DVDPSchedule(1024, 64, TPS["cosine"], beta_schedule="cosine_shifted", shift_base=2048)
    fixed = DVDPSchedule(1024, 1024, [], beta_schedule="cosine_interpolated", shift_base=64)  # the fixed baseline
    assert torch.allclose(fixed.abar, real("cosine_interpolated").abar)


@pytest.mark.parametrize("name", sorted(TPS))
def test_band_rule_works_on_every_schedule(name):
    points = propose_turning_points(1024, 64, FFHQ_BANDS, beta_schedule=name, threshold=0.03)
    assert points == TPS[name]
    s = real(name)
    for tp, var in zip(points, FFHQ_BANDS):
        assert band_snr(float(s.abar[tp]), var) < 0.03 <= band_snr(float(s.abar[tp - 1]), var)
    assert s.shifted_abar(1000, 4) < 1e-3  # terminal-SNR validation holds for the shifted schedules


def test_stage_logsnr_ranges_are_fixed_by_the_band_rule_not_the_schedule():
    """Stages 0..3 end at band-SNR thresholds: the same pixel log-SNR on every schedule (their starts
    are one step after the previous threshold, so they move with the step size)."""
    ranges = {name: [real(name).stage_logsnr_range(k) for k in range(4)] for name in TPS}
    for name in TPS:
        for (low, _), (ref_low, _) in zip(ranges[name], ranges["cosine"]):
            assert low == pytest.approx(ref_low, abs=0.03)
    for (_, high), (_, ref_high) in zip(ranges["cosine_interpolated"][1:], ranges["cosine"][1:]):
        assert high == pytest.approx(ref_high, abs=0.03)
    spans = [stage_logsnr_spans(real(name)) for name in ("cosine", "cosine_interpolated")]
    assert spans[0] == pytest.approx(spans[1], abs=0.05)


def test_old_schedule_dicts_still_load():
    old = {"resolution": 64, "root_resolution": 16, "turning_points": [300, 600], "num_steps": 1000,
           "beta_schedule": "linear", "ramp": "cosine", "terminal_abar_bound": 1e-3}
    s = DVDPSchedule.from_dict(old)
    assert s.sampling_grid == "uniform" and s.shift_base is None and DVDPSchedule.from_dict(s.to_dict()) == s


def test_uniform_grid_is_unchanged_and_logsnr_grid_follows_the_spans():
    s = DVDPSchedule(64, 16, [300, 600])
    assert step_grid(s, 10) == [1000, 900, 800, 700, 600, 500, 400, 300, 200, 100, 0]  # as before issue 11
    assert step_grid(s, 171)[-54:-51] == [306, 300, 294]  # rounding ties broken as before (stage 0 gets 52)
    r = real("cosine")
    grid = step_grid(r, 50, "logsnr")
    assert len(grid) == 51 and set(r.turning_points) <= set(grid)
    calls = [sum(1 for t in grid[:-1] if r.stage_of(t) == k) for k in range(5)]
    spans = stage_logsnr_spans(r)
    assert calls == [round(50 * x / sum(spans)) for x in spans]  # proportional (no rounding fix needed here)
    assert min(step_grid(r, 5, "logsnr", min_per_stage=1)) == 0
    for steps in (5, 7, 12):  # at least min(2, steps // stages) calls per stage
        grid = step_grid(r, steps, "logsnr")
        counts = [sum(1 for t in grid[:-1] if r.stage_of(t) == k) for k in range(5)]
        assert sum(counts) == steps and min(counts) >= min(2, steps // 5)


def test_grid_policy_default_comes_from_the_schedule_and_lists_pass_through():
    s = DVDPSchedule(64, 16, [300, 600], sampling_grid="logsnr")
    assert step_grid(s, 20) == step_grid(s, 20, "logsnr") != step_grid(s, 20, "uniform")
    assert parse_grid("logsnr") == "logsnr" and parse_grid("1000, 600,300,0") == [1000, 600, 300, 0]
    with pytest.raises(ValueError, match="uniform"):
        parse_grid("fast")
    with pytest.raises(ValueError, match="grid policy"):
        step_grid(s, 20, "fast")
    denoiser = lambda y, t: torch.zeros_like(y)
    explicit = sample(denoiser, s, [0], channels=1, method="ddim", grid=[1000, 600, 300, 0])
    assert explicit.shape == (1, 1, 64, 64)
    with pytest.raises(ValueError, match="explicit list"):
        sample(denoiser, s, [0], channels=1, steps=50, grid=[1000, 600, 300, 0])
