"""Denoiser wrapper: both modes at every stage, input normalisation, prediction round trips,
config errors and the sampler contract."""

import pytest
import torch

from dvdp_hr.diffusion import prediction_target, sample
from dvdp_hr.models import ModelConfig, build_denoiser, count_parameters
from model_fixtures import randomise, three_stage_schedule


@pytest.fixture(scope="module")
def schedule():
    return three_stage_schedule()


def stage_batch(schedule, k, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = schedule.sample_timesteps(k, batch, generator=g)
    x0 = torch.rand(batch, 3, 64, 64, generator=g) * 2 - 1
    size = schedule.stage_resolution(k)
    noise = torch.randn(batch, 3, size, size, generator=g)
    return x0, noise, t, schedule.q_sample(x0, t, noise)


@pytest.mark.parametrize("mode", ["shared", "per_stage"])
def test_shapes_at_every_stage(schedule, mode):
    net = build_denoiser(ModelConfig(mode=mode), schedule)
    for k in range(schedule.num_stages):
        _, _, t, y = stage_batch(schedule, k)
        size = schedule.stage_resolution(k)
        assert net(y, t).shape == (2, 3, size, size)
        assert net.predict_x0(y, t).shape == (2, 3, size, size)


def test_shared_vs_per_stage_modules(schedule):
    shared = build_denoiser(ModelConfig(mode="shared"), schedule)
    assert len(shared.networks) == 1
    assert all(shared.stage_modules(k) is shared.networks[0] for k in range(3))
    assert shared.networks[0].stage_embed.num_embeddings == 3
    per = build_denoiser(ModelConfig(mode="per_stage", stage_presets=["small", "tiny", "tiny"]),
                         schedule)
    assert [per.stage_modules(k) for k in range(3)] == list(per.networks)
    assert per.networks[0].stage_embed is None
    assert count_parameters(per) == sum(count_parameters(n) for n in per.networks)
    with pytest.raises(ValueError, match="stage must be"):
        per.stage_modules(3)


def test_per_stage_routes_to_its_network_only(schedule):
    net = randomise(build_denoiser(ModelConfig(mode="per_stage"), schedule))
    _, _, t, y = stage_batch(schedule, 1)
    net(y, t).square().mean().backward()
    touched = [any(p.grad is not None for p in n.parameters()) for n in net.networks]
    assert touched == [False, True, False]


@pytest.mark.parametrize("mode", ["shared", "per_stage"])
def test_input_normalisation_applied_inside(schedule, mode):
    net = randomise(build_denoiser(ModelConfig(mode=mode), schedule))
    _, _, t, y = stage_batch(schedule, 2)
    k = 2
    # dvdp-math.md s6: y_t / sqrt(1 + (4^k - 1) abar_t)
    scale = (1 + (4**k - 1) * schedule.abar[t]).rsqrt().float().view(-1, 1, 1, 1)
    stage = torch.full_like(t, k) if mode == "shared" else None
    expected = net.stage_modules(k)(y * scale, t, stage)
    torch.testing.assert_close(net(y, t), expected)


@pytest.mark.parametrize("prediction", ["x0", "eps", "v"])
def test_prediction_round_trip(schedule, prediction):
    """A network that outputs the exact target makes predict_x0 return the stage image."""
    net = build_denoiser(ModelConfig(prediction=prediction), schedule)
    for k in range(schedule.num_stages):
        x0, noise, t, y = stage_batch(schedule, k, seed=k)
        t = torch.full_like(t, schedule.stage_bounds(k)[0] + 40)  # gamma well above gamma_min
        y = schedule.q_sample(x0, t, noise)
        target = prediction_target(schedule, x0, noise, t, prediction)
        hook = net.stage_modules(k).register_forward_hook(lambda m, i, o: target)
        try:
            x0_hat = net.predict_x0(y, t)
        finally:
            hook.remove()
        torch.testing.assert_close(x0_hat, schedule.stage_image(x0, k), atol=1e-4, rtol=1e-4)


def test_rejects_mixed_stages_and_wrong_resolution(schedule):
    net = build_denoiser(ModelConfig(), schedule)
    _, _, _, y = stage_batch(schedule, 0)
    with pytest.raises(ValueError, match="one stage"):
        net(y, torch.tensor([10, 700]))
    with pytest.raises(ValueError, match="stage 1"):
        net(y, torch.tensor([400, 410]))
    with pytest.raises(ValueError, match="3 entries"):
        net(y, torch.tensor([10, 20, 30]))
    assert net(y, 25).shape == y.shape  # one int serves the whole batch


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="both"), "model.mode"),
    (dict(preset="huge"), "model.preset"),
    (dict(prediction="score"), "model.prediction"),
    (dict(attention="flash"), "model.attention"),
    (dict(dropout=1.5), "model.dropout"),
    (dict(stage_presets=["tiny"] * 3), "per_stage"),
    (dict(mode="per_stage", stage_presets=["tiny", "nope", "tiny"]), "stage_presets"),
    (dict(compile="yes"), "model.compile"),
])
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs).validate()


def test_build_errors(schedule):
    with pytest.raises(ValueError, match="3 stages"):
        build_denoiser(ModelConfig(mode="per_stage", stage_presets=["tiny", "tiny"]), schedule)
    with pytest.raises(ValueError, match="divisible by 32"):
        build_denoiser(ModelConfig(preset="ffhq1024"), schedule)  # 16 px root, 6 levels


def test_forced_xformers_on_cpu_fails_clearly(schedule):
    net = build_denoiser(ModelConfig(attention="xformers"), schedule)
    _, _, t, y = stage_batch(schedule, 2)
    with pytest.raises(RuntimeError, match="xformers"):
        net(y, t)


def test_channels_last_and_checkpointing_match_default(schedule):
    outputs = []
    for extra in ({}, {"channels_last": True}, {"grad_checkpointing": True}):
        torch.manual_seed(0)
        net = randomise(build_denoiser(ModelConfig(**extra), schedule))
        _, _, t, y = stage_batch(schedule, 1)
        outputs.append(net(y, t))
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(outputs[2], outputs[0])


def test_bf16_autocast_runs(schedule):
    net = randomise(build_denoiser(ModelConfig(), schedule))
    _, _, t, y = stage_batch(schedule, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(y, t)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_sampler_contract(schedule):
    net = randomise(build_denoiser(ModelConfig(prediction="v"), schedule)).eval()
    with torch.no_grad():
        images = sample(net.predict_x0, schedule, [0, 1], method="ddim", steps=12)
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()
