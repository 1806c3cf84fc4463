"""Kernels, posterior and turning points (dvdp-math.md s3-s6): exact identities plus Monte Carlo."""
import pytest
import torch

from dvdp_hr.diffusion import (DVDPSchedule, detail, down, downsample_at_turning_point, kernel_coefficients,
                               lowpass, posterior_coefficients, prediction_target, prediction_to_x0, q_step,
                               step_coefficients, training_loss, upsample_at_turning_point)

from dvdp_hr.diffusion.prediction import normalised_coefficients

SCHEDULE = DVDPSchedule(16, 4, [300, 600])
TIMES = [2, 150, 299, 300, 301, 450, 599, 600, 601, 800, 1000]


def band_moments(y: torch.Tensor):
    """Per-coordinate means and average variances of the P' and Q' bands over the batch."""
    low, high = lowpass(y), detail(y)
    return low.mean(0), high.mean(0), low.var(0).mean() * 4 / 1, high.var(0).mean() * 4 / 3


def test_one_step_kernels_compose_to_the_marginals_exactly():
    # q(y_t) = N(a_t g_t per band, v_t): kernel mean scale * marginal mean and kernel var + scale^2 v_s
    for t in TIMES:
        k = SCHEDULE.stage_of(t)
        if t - 1 < SCHEDULE.stage_bounds(k)[0]:
            continue
        scale, var = kernel_coefficients(SCHEDULE, t, t - 1, k)
        a_t, a_s = SCHEDULE.abar[t].sqrt(), SCHEDULE.abar[t - 1].sqrt()
        g_t, g_s = SCHEDULE.gamma(t, k), SCHEDULE.gamma(t - 1, k)
        assert torch.allclose(scale.low * a_s, a_t) and torch.allclose(scale.detail * a_s * g_s, a_t * g_t)
        v_t, v_s = 1 - SCHEDULE.abar[t], 1 - SCHEDULE.abar[t - 1]
        for band in ("low", "detail"):
            composed = getattr(scale, band) ** 2 * v_s + getattr(var, band)
            assert torch.allclose(composed, v_t)
        assert float(var.detail) >= float(var.low) - 1e-15  # s_t >= beta_t


def test_chained_kernels_match_q_sample_monte_carlo():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 1, 16, 16, generator=gen, dtype=torch.float64) * 2 - 1
    n = 10000
    batch = x0.expand(n, -1, -1, -1)
    y = SCHEDULE.q_sample(batch, 501, torch.randn(n, 1, 8, 8, generator=gen, dtype=torch.float64))
    for t in range(502, 601):  # the end of the attenuated stage 1, gamma 0.5 -> 0
        y = q_step(SCHEDULE, y, t - 1, t, torch.randn(y.shape, generator=gen, dtype=torch.float64))
    direct = SCHEDULE.q_sample(batch, 600, torch.randn(y.shape, generator=gen, dtype=torch.float64))
    for chained, exact in zip(band_moments(y), band_moments(direct)):
        assert torch.allclose(chained, exact, atol=0.05)
    assert float(detail(SCHEDULE.q_sample(x0, 600, torch.zeros(1, 1, 8, 8, dtype=torch.float64))).abs().max()) < 1e-12


def test_posterior_equals_bayes_rule_and_the_eta_one_step():
    for t in TIMES:
        k = SCHEDULE.stage_of(t)
        scale, kvar = kernel_coefficients(SCHEDULE, t, t - 1, k)
        post = posterior_coefficients(SCHEDULE, t, k)
        ddim = step_coefficients(SCHEDULE, t, t - 1, k, eta=1.0)
        a_s, v_s = SCHEDULE.abar[t - 1].sqrt(), 1 - SCHEDULE.abar[t - 1]
        for band, g_s in (("low", 1.0), ("detail", SCHEDULE.gamma(t - 1, k))):
            m, kv = getattr(scale, band), getattr(kvar, band)
            gain = m * v_s / (m**2 * v_s + kv)  # scalar Gaussian conditioning per band
            assert torch.allclose(getattr(post.y_coef, band), gain)
            assert torch.allclose(getattr(post.z0_coef, band), a_s * g_s * (1 - gain * m))
            assert torch.allclose(getattr(post.variance, band), v_s - gain * m * v_s)
            for field in ("z0_coef", "y_coef", "variance"):
                assert torch.allclose(getattr(getattr(ddim, field), band), getattr(getattr(post, field), band))


def test_posterior_steps_keep_the_marginal_monte_carlo():
    """Ancestral steps with the true z0 walk the exact marginals: 100 steps through stage 1's ramp
    (gamma 0.5 -> 0.9) must land on q(y_400), far from where they started (q(y_500))."""
    gen = torch.Generator().manual_seed(1)
    z0 = (torch.rand(1, 1, 8, 8, generator=gen, dtype=torch.float64) * 2 - 1) * 2
    n, start, end = 20000, 500, 400
    from dvdp_hr.diffusion.process import apply_step
    batch = z0.expand(n, -1, -1, -1)
    y = SCHEDULE.q_sample(batch / 2, start, torch.randn(n, 1, 8, 8, generator=gen, dtype=torch.float64))
    initial = band_moments(y)
    for t in range(start, end, -1):
        y = apply_step(posterior_coefficients(SCHEDULE, t, 1), y, batch,
                       torch.randn(n, 1, 8, 8, generator=gen, dtype=torch.float64))
    direct = SCHEDULE.q_sample(batch / 2, end, torch.randn(n, 1, 8, 8, generator=gen, dtype=torch.float64))
    for got, want, before in zip(band_moments(y), band_moments(direct), initial):
        assert torch.allclose(got, want, atol=0.03)
    assert not torch.allclose(initial[1], band_moments(direct)[1], atol=0.1)  # the walk had to move


def test_turning_points_both_ways_monte_carlo():
    gen = torch.Generator().manual_seed(2)
    x0 = torch.rand(1, 1, 16, 16, generator=gen, dtype=torch.float64) * 2 - 1
    n, t = 40000, 300
    batch = x0.expand(n, -1, -1, -1)
    fine = SCHEDULE.q_sample(batch, t, torch.randn(n, 1, 16, 16, generator=gen, dtype=torch.float64))
    coarse = SCHEDULE.q_sample(torch.nn.functional.avg_pool2d(batch, 2), 301, torch.zeros(n, 1, 8, 8, dtype=torch.float64))
    coarse_at_t = SCHEDULE.abar[t].sqrt() * down(batch)  # stage-1 marginal mean at t (gamma = 1)
    # forward: D y_t has the stage-1 marginal N(sqrt(abar) z0', v I)
    down_y = downsample_at_turning_point(fine)
    assert torch.allclose(down_y.mean(0), coarse_at_t[0], atol=0.03)
    assert abs(float(down_y.var(0).mean()) - float(1 - SCHEDULE.abar[t])) < 0.02
    # reverse: U y' + sqrt(v) Q' xi reproduces the stage-0 marginal at t
    y_coarse = coarse_at_t + (1 - SCHEDULE.abar[t]).sqrt() * torch.randn(n, 1, 8, 8, generator=gen, dtype=torch.float64)
    up_y = upsample_at_turning_point(SCHEDULE, y_coarse, t, torch.randn(n, 1, 16, 16, generator=gen, dtype=torch.float64))
    for got, want in zip(band_moments(up_y), band_moments(fine)):
        assert torch.allclose(got, want, atol=0.03)
    assert coarse.shape == down_y.shape


@pytest.mark.parametrize("prediction", ["x0", "eps", "v", "v_orthonormal"])
def test_prediction_conversions_round_trip(prediction):
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(4, 3, 16, 16, generator=gen, dtype=torch.float64) * 2 - 1
    for t in (50, 350, 580, 900):  # 580: gamma small but above gamma_min
        k = SCHEDULE.stage_of(t)
        tt = torch.full((4,), t)
        noise = torch.randn(4, 3, 16 >> k, 16 >> k, generator=gen, dtype=torch.float64)
        y = SCHEDULE.q_sample(x0, tt, noise)
        target = prediction_target(SCHEDULE, x0, noise, tt, prediction)
        x0_hat = prediction_to_x0(SCHEDULE, target, y, tt, prediction, gamma_min=0.01)
        assert torch.allclose(x0_hat, SCHEDULE.stage_image(x0, k), atol=1e-9)
        loss = training_loss(SCHEDULE, target, x0, noise, tt, prediction, gamma_min=0.01)
        assert float(loss.abs().max()) < 1e-20


@pytest.mark.parametrize("t", [150, 300, 450, 600, 900])  # 300, 600: turning points (gamma = 0)
def test_equal_x0_errors_give_equal_losses_in_every_parameterisation(t):
    """The loss is the min-SNR x0 loss in orthonormal units whatever the network predicts."""
    gen = torch.Generator().manual_seed(4)
    k, tt = SCHEDULE.stage_of(t), torch.full((3,), t)
    x0 = torch.rand(3, 1, 16, 16, generator=gen, dtype=torch.float64) * 2 - 1
    noise = torch.randn(3, 1, 16 >> k, 16 >> k, generator=gen, dtype=torch.float64)
    y = SCHEDULE.q_sample(x0, tt, noise)
    x0_hat = SCHEDULE.stage_image(x0, k) + 0.05 * torch.randn(noise.shape, generator=gen, dtype=torch.float64)
    a, sig = SCHEDULE.abar[t].sqrt(), (1 - SCHEDULE.abar[t]).sqrt()
    gain = ops_band(SCHEDULE.gamma(tt, k))
    eps = (y - a * gain(x0_hat * 2**k)) / sig  # the eps output whose x0 estimate is x0_hat
    a_n, sig_n = normalised_coefficients(SCHEDULE, torch.tensor([t]), k)  # the network's frame (s11)
    outputs = {"x0": x0_hat, "v_orthonormal": a * eps - sig * x0_hat * 2**k, "v": a_n * eps - sig_n * x0_hat}
    if float(SCHEDULE.gamma(t, k)) > 0.1:
        outputs["eps"] = eps
    losses = {p: training_loss(SCHEDULE, out, x0, noise, tt, p) for p, out in outputs.items()}
    for p, loss in losses.items():
        assert torch.allclose(prediction_to_x0(SCHEDULE, outputs[p], y, tt, p), x0_hat)
        assert torch.allclose(loss, losses["x0"]) and float(loss.min()) > 0, p


def ops_band(gamma):
    from dvdp_hr.diffusion.ops import band_scale
    return lambda z: band_scale(z, torch.ones_like(gamma), gamma)


def test_min_snr_weighting_in_orthonormal_units():
    x0 = torch.zeros(2, 1, 16, 16, dtype=torch.float64)
    t = torch.tensor([700, 700])  # stage 2, 4x4, orthonormal factor 4
    out = torch.full((2, 1, 4, 4), 0.5, dtype=torch.float64)
    loss = training_loss(SCHEDULE, out, x0, torch.zeros_like(out), t, "x0", snr_gamma=5.0)
    snr = float(SCHEDULE.abar[700] / (1 - SCHEDULE.abar[700]))
    assert torch.allclose(loss, torch.full((2,), min(snr, 5.0) * 16 * 0.25, dtype=torch.float64))
    with pytest.raises(ValueError, match="prediction"):
        prediction_to_x0(SCHEDULE, out, out, t, "score")
