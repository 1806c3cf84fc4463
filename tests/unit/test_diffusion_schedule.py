"""Schedule golden values, stages, attenuation and argument validation (dvdp-math.md s2-s3)."""
import math

import pytest
import torch

from dvdp_hr.diffusion import DVDPSchedule, cost_fraction, propose_turning_points, step_grid
from dvdp_hr.diffusion.cost import band_snr


def test_linear_betas_golden_values():
    s = DVDPSchedule(64, 64, [])
    assert s.betas[0] == 0 and s.abar[0] == 1
    assert math.isclose(s.betas[1], 1e-4) and math.isclose(s.betas[1000], 0.02)
    assert math.isclose(float(s.abar[1000]), 4.0358297653756754e-05, rel_tol=1e-9)
    half = DVDPSchedule(64, 64, [], num_steps=500)
    assert math.isclose(half.betas[1], 2e-4) and math.isclose(half.betas[500], 0.04)


def test_cosine_betas_golden_values():
    s = DVDPSchedule(64, 64, [], beta_schedule="cosine")
    assert math.isclose(float(s.abar[500]), 0.4938435904406382, rel_tol=1e-9)
    assert float(s.abar[1000]) < 1e-8 and float(s.betas.max()) <= 0.999


def test_stages_and_turning_point_convention():
    s = DVDPSchedule(64, 16, [300, 600])
    assert (s.num_stages, s.stage_resolution(0), s.stage_resolution(2)) == (3, 64, 16)
    assert [s.stage_of(t) for t in (0, 1, 300, 301, 600, 601, 1000)] == [0, 0, 0, 1, 1, 2, 2]
    assert s.stage_bounds(1) == (300, 600)
    assert s.stage_probabilities() == pytest.approx([0.3, 0.3, 0.4])
    t = s.sample_timesteps(1, 4096, torch.Generator().manual_seed(0))
    assert int(t.min()) == 301 and int(t.max()) == 600


def test_attenuation_endpoints_and_monotone():
    for ramp in ("cosine", "linear"):
        s = DVDPSchedule(64, 16, [300, 600], ramp=ramp)
        assert float(s.gamma(300, 1)) == 1.0 and float(s.gamma(600, 1)) == 0.0  # stage 1 ramp
        assert float(s.gamma(300, 0)) == 0.0  # same instant seen from the finer stage
        g = s.gammas[1][300:601]
        assert bool((g[1:] <= g[:-1]).all())
        assert bool((s.gammas[2] == 1).all())  # root: no attenuation
    assert math.isclose(float(DVDPSchedule(64, 16, [300, 600]).gamma(450, 1)), math.cos(math.pi / 4))


@pytest.mark.parametrize("kwargs, name", [
    (dict(resolution=64, root_resolution=24, turning_points=[300]), "root_resolution"),
    (dict(resolution=64, root_resolution=16, turning_points=[300]), "turning_points"),
    (dict(resolution=64, root_resolution=16, turning_points=[600, 300]), "turning_points"),
    (dict(resolution=64, root_resolution=16, turning_points=[0, 300]), "turning_points"),
    (dict(resolution=64, root_resolution=16, turning_points=[300, 1000]), "turning_points"),
    (dict(resolution=64, root_resolution=16, turning_points=[300, 600], beta_schedule="quadratic"), "beta_schedule"),
    (dict(resolution=64, root_resolution=16, turning_points=[300, 600], ramp="step"), "ramp"),
    (dict(resolution=64, root_resolution=64, turning_points=[], num_steps=1), "num_steps"),
])
def test_invalid_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DVDPSchedule(**kwargs)


def test_root_stage_must_start_at_zero_snr():
    with pytest.raises(ValueError, match="beta_schedule='cosine'"):
        DVDPSchedule(1024, 64, [100, 200, 300, 400])
    s = DVDPSchedule(1024, 64, [100, 200, 300, 400], beta_schedule="cosine")
    assert s.shifted_abar(1000, 4) < 1e-3


def test_q_sample_units_linearity_and_inputs():
    s = DVDPSchedule(16, 4, [300, 600])
    x0 = torch.rand(3, 1, 16, 16, dtype=torch.float64) * 2 - 1
    t = torch.tensor([350, 420, 600])
    zero = torch.zeros(3, 1, 8, 8, dtype=torch.float64)
    y = s.q_sample(x0, t, zero)
    y_stage = s.q_sample(torch.nn.functional.avg_pool2d(x0, 2), t, zero)
    assert torch.allclose(y, y_stage)
    # at the turning point t = 600 (gamma 0) the mean is sqrt(abar) * P' z0, z0 = 2 * pooled image
    pooled = torch.nn.functional.avg_pool2d(x0[2:], 2) * 2
    expected = s.abar[600].sqrt() * torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(pooled, 2), scale_factor=2)
    assert torch.allclose(y[2:], expected)
    noise = torch.randn_like(zero)
    assert torch.allclose(s.q_sample(2 * x0, t, 2 * noise), 2 * s.q_sample(x0, t, noise))
    with pytest.raises(ValueError, match="one stage"):
        s.q_sample(x0, torch.tensor([100, 400, 500]), zero)
    with pytest.raises(ValueError, match="noise"):
        s.q_sample(x0, t, torch.zeros(3, 1, 16, 16))


def test_fixed_resolution_is_plain_ddpm():
    s = DVDPSchedule(8, 8, [])
    x0, eps = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.randn(2, 1, 8, 8, dtype=torch.float64)
    y = s.q_sample(x0, 500, eps)
    assert torch.allclose(y, s.abar[500].sqrt() * x0 + (1 - s.abar[500]).sqrt() * eps)
    assert float(s.input_scale(torch.tensor([500]))) == 1.0


def test_input_normalisation_matches_shifted_schedule():
    s = DVDPSchedule(64, 16, [300, 600])
    t = torch.tensor([700])
    scale = float(s.input_scale(t))
    a = float(s.abar[700])
    assert math.isclose(scale**2 * 16 * a, s.shifted_abar(700, 2), rel_tol=1e-6)  # signal power
    assert math.isclose(scale**2 * (1 - a) + s.shifted_abar(700, 2), 1.0, rel_tol=1e-6)  # VP


def test_step_grid_contains_turning_points_and_counts_calls():
    s = DVDPSchedule(64, 16, [300, 600])
    assert step_grid(s) == list(range(1000, -1, -1))
    for steps in (3, 10, 25, 50, 99):
        grid = step_grid(s, steps)
        assert len(grid) == steps + 1 and grid[0] == 1000 and grid[-1] == 0
        assert {300, 600} <= set(grid) and grid == sorted(set(grid), reverse=True)
    with pytest.raises(ValueError, match="steps"):
        step_grid(s, 2)


def test_cost_model_golden_value():
    s = DVDPSchedule(256, 64, [300, 600])  # dvdp-math.md s8 example: 0.40 of a fixed-resolution run
    assert cost_fraction(s) == pytest.approx(0.3 + 0.3 / 4 + 0.4 / 16)
    assert cost_fraction(DVDPSchedule(64, 64, [])) == 1.0


def test_turning_point_rule_hits_the_snr_threshold():
    variances = [0.02, 0.1, 0.5]
    points = propose_turning_points(512, 64, variances, beta_schedule="cosine", threshold=0.05)
    assert points == sorted(points) and len(set(points)) == 3
    s = DVDPSchedule(512, 64, points, beta_schedule="cosine")
    for tp, var in zip(points, variances):
        assert band_snr(float(s.abar[tp]), var) < 0.05 <= band_snr(float(s.abar[tp - 1]), var)
    with pytest.raises(ValueError, match="band_variances"):
        propose_turning_points(512, 64, [0.1])


def test_full_resolution_calls_weigh_each_call_by_its_pixels():
    from dvdp_hr.diffusion.cost import cost_matched_steps, full_resolution_calls

    s = DVDPSchedule(resolution=1024, root_resolution=64, turning_points=[139, 261, 421, 584],
                     beta_schedule="cosine_interpolated")  # configs/ffhq1024.yaml's abar_t
    # uniform, 50 calls: 7 / 6 / 8 / 8 / 21 per stage (1024 ... 64 px), weighted 1, 1/4, 1/16, 1/64, 1/256
    assert full_resolution_calls(s, 50, "uniform") == 7 + 6 / 4 + 8 / 16 + 8 / 64 + 21 / 256
    assert full_resolution_calls(s, 50, "uniform") == pytest.approx(cost_fraction(s, 50, "uniform") * 50)
    assert cost_matched_steps(s, 50, "uniform", "uniform") == 50
    matched = cost_matched_steps(s, 50, "logsnr", "uniform")  # logsnr puts 15 of 50 calls at 1024 px
    assert matched > 80 and abs(full_resolution_calls(s, matched, "uniform") - full_resolution_calls(s, 50, "logsnr")) < 0.3
