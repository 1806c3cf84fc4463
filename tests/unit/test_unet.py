"""UNet: shapes, zero-init output, fused scale-shift, checkpointing, presets."""

import math

import pytest
import torch
import torch.nn.functional as F

from dvdp_hr.models import MODEL_PRESETS, UNet, UNetPreset, count_parameters
from dvdp_hr.models.layers import group_norm, group_norm_scale_shift, timestep_embedding
from model_fixtures import randomise

TINY = MODEL_PRESETS["tiny"]
# Pinned counts; test_counts_match_diffusers_peer checks them against diffusers' UNet2DModel.
EXPECTED_PARAMS = {"tiny": 345_587, "small": 21_056_387, "ffhq1024": 136_968_067}


@pytest.mark.parametrize("size", [16, 32, 64])
def test_output_shape_any_resolution(size):
    net = UNet(TINY, num_stages=3)
    x = torch.randn(2, 3, size, size)
    out = net(x, torch.tensor([3, 900]), torch.tensor([0, 2]))
    assert out.shape == x.shape


def test_output_is_zero_at_init():
    net = UNet(TINY)
    out = net(torch.randn(2, 3, 32, 32), torch.tensor([10, 500]))
    assert torch.count_nonzero(out) == 0


def test_blocks_are_identity_at_init():
    net = UNet(TINY)
    block = net.down[0]
    x = torch.randn(2, TINY.base_channels, 16, 16)
    emb = torch.randn(2, 4 * TINY.base_channels)
    torch.testing.assert_close(block(x, emb), x)


def test_stage_embedding_conditions_output():
    net = randomise(UNet(TINY, num_stages=3))
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([400])
    a, b = net(x, t, torch.tensor([0])), net(x, t, torch.tensor([1]))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="stage"):
        net(x, t)


def test_rejects_bad_input():
    net = UNet(TINY)
    with pytest.raises(ValueError, match="multiple of 4"):
        net(torch.randn(1, 3, 18, 18), torch.tensor([1]))
    with pytest.raises(ValueError, match="expected input"):
        net(torch.randn(1, 1, 16, 16), torch.tensor([1]))


def test_timestep_embedding_values():
    emb = timestep_embedding(torch.tensor([0, 7]), 8)
    half = torch.arange(4) / 4
    freqs = torch.exp(-math.log(10000.0) * half)
    torch.testing.assert_close(emb[0], torch.cat([torch.ones(4), torch.zeros(4)]))
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(7 * freqs), torch.sin(7 * freqs)]))


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_group_norm_scale_shift_matches_reference(channels_last):
    norm = randomise(torch.nn.GroupNorm(4, 16))
    x = torch.randn(3, 16, 8, 8)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    scale, shift = torch.randn(3, 16), torch.randn(3, 16)
    expected = norm(x) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    torch.testing.assert_close(group_norm_scale_shift(x, norm, scale, shift), expected,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dropout", [0.0, 0.3])  # 0.3: recomputation must replay the dropout masks
def test_gradient_checkpointing_same_gradients(dropout):
    torch.manual_seed(0)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 600])
    grads = []
    for ckpt in (False, True):
        net = randomise(UNet(TINY, dropout=dropout))
        net.grad_checkpointing = ckpt
        torch.manual_seed(1)
        net(x, t).square().mean().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(plain, checkpointed)


def test_dropout_only_in_training():
    net = randomise(UNet(TINY, dropout=0.3))
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([100])
    net.train()
    assert not torch.allclose(net(x, t), net(x, t))
    net.eval()
    torch.testing.assert_close(net(x, t), net(x, t))


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_preset_parameter_counts(name):
    with torch.device("meta"):  # count without initialising 137M weights
        net = UNet(MODEL_PRESETS[name])
    assert count_parameters(net) == EXPECTED_PARAMS[name]


def test_preset_sizes():
    assert count_parameters(UNet(TINY)) < 500_000
    assert 100e6 <= EXPECTED_PARAMS["ffhq1024"] <= 150e6
    assert MODEL_PRESETS["ffhq1024"].attn_levels == (4, 5)


def test_counts_match_diffusers_peer():
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).parents[2] / "bench" / "unet_vs_peer.py"
    spec = importlib.util.spec_from_file_location("unet_vs_peer", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for name in ("tiny", "small"):
        assert count_parameters(bench.build_peer(MODEL_PRESETS[name])) == EXPECTED_PARAMS[name]


def test_preset_validation():
    bad = UNetPreset(base_channels=24, channel_mult=(1, 2), num_res_blocks=1,
                     attn_resolutions=(8,), reference_resolution=16, norm_groups=32)
    with pytest.raises(ValueError, match="norm_groups"):
        UNet(bad)
    missing = UNetPreset(base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                         attn_resolutions=(5,), reference_resolution=16, head_channels=32)
    with pytest.raises(ValueError, match="attn_resolutions"):
        UNet(missing)


def test_resblock_resampling_shapes():
    net = UNet(TINY)
    down = [b for b in net.down if b.res.resample == "down"]
    up = [b for b in net.up if b.res.resample == "up"]
    assert len(down) == len(up) == TINY.num_levels - 1
    x, emb = torch.randn(1, 32, 8, 8), torch.randn(1, 64)
    assert down[-1](x, emb).shape[-1] == 4
    assert F.interpolate(x, scale_factor=2.0).shape == up[0](x, emb).shape


def test_group_norm_stays_in_activation_dtype_under_autocast():
    norm = randomise(torch.nn.GroupNorm(4, 16))
    x = torch.randn(2, 16, 8, 8)
    scale, shift = torch.randn(2, 16), torch.randn(2, 16)
    expected = group_norm_scale_shift(x, norm, scale, shift)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = group_norm_scale_shift(x.bfloat16(), norm, scale.bfloat16(), shift.bfloat16())
        plain = group_norm(x.bfloat16(), 4, norm.weight, norm.bias, norm.eps)
    assert got.dtype == plain.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, atol=0.1, rtol=0.05)
    torch.testing.assert_close(plain.float(), norm(x), atol=0.05, rtol=0.05)
