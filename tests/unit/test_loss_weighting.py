"""Loss weightings stated in the network's pixel units and the unit-scale v (dvdp-math.md s11).

The pinned numbers are the table of docs/dvdp-math.md s11 (bench/loss_weight_table.py) on the real
run's schedule: cosine_interpolated, 1024 -> 64, turning points [139, 261, 421, 584].
"""
import math

import pytest
import torch

from dvdp_hr.diffusion import (DVDPSchedule, detail, lowpass, loss_weights, prediction_target, prediction_to_x0,
                               training_loss)
from dvdp_hr.diffusion.prediction import normalised_coefficients

REAL = DVDPSchedule(1024, 64, [139, 261, 421, 584], beta_schedule="cosine_interpolated")
SMALL = DVDPSchedule(32, 8, [139, 261], beta_schedule="cosine_interpolated")

# t: (min_snr, min_snr_orthonormal, eps_mse P', eps_mse Q', edm), from the s11 table
TABLE = {
    69: (5, 5, 47.43, 23.98, 51.43),
    139: (5, 5, 8.536, 0, 12.54),
    140: (5, 20, 33.48, 33.47, 37.48),
    200: (5, 11.71, 11.71, 5.853, 15.71),
    262: (5, 18.71, 18.71, 18.71, 22.71),
    421: (2.485, 2.485, 2.485, 0, 6.485),
    585: (5, 5.694, 5.694, 5.694, 9.694),
    792: (0.3578, 0.3578, 0.3578, 0.3578, 4.358),
}


@pytest.mark.parametrize("t", sorted(TABLE))
def test_effective_weights_match_the_math_doc_table(t):
    got = [loss_weights(REAL, t, name) for name in ("min_snr", "min_snr_orthonormal", "eps_mse", "edm")]
    values = [float(got[0].low[0]), float(got[1].low[0]), float(got[2].low[0]), float(got[2].detail[0]),
              float(got[3].low[0])]
    assert values == pytest.approx(TABLE[t], rel=6e-4, abs=1e-9)
    for w in (got[0], got[1], got[3]):  # one weight for both bands
        assert torch.equal(w.low, w.detail)


def test_min_snr_clips_at_the_same_pixel_snr_in_every_stage():
    k = REAL.stage_of(700)
    pixel = 4.0**k * float(REAL.abar[700] / (1 - REAL.abar[700]))
    assert math.isclose(float(loss_weights(REAL, 700, "min_snr").low[0]), min(pixel, 5.0))
    # the orthonormal variant clips at 5 x 4^k: 4x more at every turning point (s11)
    assert float(loss_weights(REAL, 262, "min_snr_orthonormal").low[0]) > 3.7 * float(
        loss_weights(REAL, 140, "min_snr").low[0])


def _case(schedule, t, seed=0):
    gen = torch.Generator().manual_seed(seed)
    k, tt = schedule.stage_of(t), torch.full((3,), t)
    x0 = torch.rand(3, 3, schedule.resolution, schedule.resolution, generator=gen, dtype=torch.float64) * 2 - 1
    noise = torch.randn(3, 3, schedule.resolution >> k, schedule.resolution >> k, generator=gen, dtype=torch.float64)
    x0_hat = schedule.stage_image(x0, k) + 0.05 * torch.randn(noise.shape, generator=gen, dtype=torch.float64)
    return k, tt, x0, noise, x0_hat, schedule.q_sample(x0, tt, noise)


@pytest.mark.parametrize("weighting", ["min_snr", "min_snr_orthonormal", "eps_mse", "edm"])
@pytest.mark.parametrize("t", [100, 139, 200, 300])
def test_training_loss_is_the_band_weighted_pixel_mse(weighting, t):
    k, tt, x0, noise, x0_hat, _ = _case(SMALL, t)
    err = x0_hat - SMALL.stage_image(x0, k)
    w = loss_weights(SMALL, tt, weighting)
    expected = (w.low * lowpass(err).pow(2).flatten(1).mean(1) + w.detail * detail(err).pow(2).flatten(1).mean(1))
    got = training_loss(SMALL, x0_hat, x0, noise, tt, "x0", weighting=weighting)
    assert torch.allclose(got, expected, rtol=1e-10)


@pytest.mark.parametrize("t", [100, 200, 300])
def test_eps_mse_is_l_simple_for_every_parameterisation(t):
    """L_simple = mean ||eps_hat - eps||^2: the same number whether the network predicts eps, x0 or v."""
    k, tt, x0, noise, x0_hat, y = _case(SMALL, t, seed=1)
    a, sig = SMALL.abar[t].sqrt(), (1 - SMALL.abar[t]).sqrt()
    g = SMALL.gamma(t, k)
    z0_hat = x0_hat * 2**k
    eps_hat = (y - a * (lowpass(z0_hat) + g * detail(z0_hat))) / sig
    simple = (eps_hat - noise).pow(2).flatten(1).mean(1)
    assert torch.allclose(training_loss(SMALL, eps_hat, x0, noise, tt, "eps", weighting="eps_mse"), simple)
    assert torch.allclose(training_loss(SMALL, x0_hat, x0, noise, tt, "x0", weighting="eps_mse"), simple)
    a_n, s_n = normalised_coefficients(SMALL, tt[:1], k)
    v = a_n * eps_hat - s_n * x0_hat
    assert torch.allclose(training_loss(SMALL, v, x0, None, tt, "v", y_t=y, weighting="eps_mse"), simple)
    assert torch.allclose(training_loss(SMALL, eps_hat, x0, None, tt, "eps", y_t=y, weighting="eps_mse"), simple)


def test_v_has_unit_scale_at_every_stage_while_v_orthonormal_grows_2_to_the_k():
    gen = torch.Generator().manual_seed(2)
    # smooth images (like photographs, whose variance sits in low frequencies): pixel std 0.5 at every scale
    x0 = 0.5 * torch.randn(256, 3, 1, 1, generator=gen, dtype=torch.float64).expand(256, 3, 32, 32)
    for t in (60, 200, 400):  # stages 0, 1, 2 of SMALL, each at moderate noise
        k, tt = SMALL.stage_of(t), torch.full((256,), t)
        noise = torch.randn(256, 3, 32 >> k, 32 >> k, generator=gen, dtype=torch.float64)
        v, v_orth = (prediction_target(SMALL, x0, noise, tt, p).std() for p in ("v", "v_orthonormal"))
        assert 0.45 < float(v) < 1.05
        if k == 2 and t == 400:  # at the root the orthonormal v is dominated by 2^k z0
            assert float(v_orth) > 1.5 * float(v)


@pytest.mark.parametrize("prediction", ["v", "v_orthonormal"])
def test_v_round_trip_at_gamma_zero(prediction):
    k, tt, x0, noise, _, y = _case(SMALL, 139)  # the turning point: the detail band is pure noise
    target = prediction_target(SMALL, x0, noise, tt, prediction)
    assert torch.allclose(prediction_to_x0(SMALL, target, y, tt, prediction), SMALL.stage_image(x0, k), atol=1e-10)


def test_unknown_weighting_names_the_choices():
    with pytest.raises(ValueError, match="min_snr"):
        loss_weights(SMALL, 100, "snr")
