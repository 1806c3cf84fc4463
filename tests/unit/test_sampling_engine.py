"""The sampling engine: batch plan, rank invariance, batch-size tolerance, bf16 autocast with an fp32
state, uint8 quantisation, and the sampler's turning-point hook."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from dvdp_hr.diffusion import DVDPSchedule, sample
from dvdp_hr.sampling import batch_plan, deal, generate, parse_seeds, quantize
from dvdp_hr.sampling.seeds import SeedError

SCHEDULE = DVDPSchedule(16, 4, [300, 600])


class ConvDenoiser(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def predict_x0(self, y, t):
        return torch.tanh(self.conv(y * SCHEDULE.input_scale(t)[:, None, None, None]))


def test_seed_lists_and_the_batch_plan():
    assert parse_seeds("0-3,10, 7") == [0, 1, 2, 3, 10, 7]
    for bad in ("5-2", "a", "1,1", "0-3,2"):
        with pytest.raises(SeedError):
            parse_seeds(bad)
    plan = batch_plan(range(10), 4)
    assert plan == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert deal(plan, 0, 2) == [plan[0], plan[2]] and deal(plan, 1, 2) == [plan[1]]
    for world in (1, 2, 3, 5):
        dealt = [s for r in range(world) for b in deal(plan, r, world) for s in b]
        assert sorted(dealt) == list(range(10))  # every seed once, for any world size


def test_images_are_bitwise_identical_for_any_world_size_and_close_for_another_batch():
    net, seeds = ConvDenoiser(), list(range(7))
    kwargs = dict(steps=8, method="ancestral", device="cpu", precision="fp32")
    one = generate(net, SCHEDULE, seeds, batch=3, **kwargs)
    for world in (2, 3):
        split = {}
        for rank in range(world):
            split.update(generate(net, SCHEDULE, seeds, batch=3, rank=rank, world=world, **kwargs))
        assert sorted(split) == seeds and all(np.array_equal(one[s], split[s]) for s in seeds)
    other = generate(net, SCHEDULE, seeds, batch=2, **kwargs)
    # conv kernels may round differently per batch size: at most one uint8 step apart
    assert all(np.abs(one[s].astype(int) - other[s].astype(int)).max() <= 1 for s in seeds)
    assert not np.array_equal(one[0], one[1]) and one[0].shape == (16, 16, 3) and one[0].dtype == np.uint8


def test_bf16_autocast_runs_inside_the_denoiser_and_the_state_stays_fp32():
    seen = []

    class Spy(ConvDenoiser):
        def predict_x0(self, y, t):
            out = self.conv(y)
            seen.append((y.dtype, torch.is_autocast_enabled("cpu"), out.dtype))
            return torch.tanh(out)

    generate(Spy(), SCHEDULE, [0, 1], batch=2, steps=4, precision="bf16")
    assert seen and all(s == (torch.float32, True, torch.bfloat16) for s in seen)


def test_quantize_gives_the_bytes_a_png_holds():
    images = torch.linspace(-1.2, 1.2, 2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    pixels = quantize(images)
    assert pixels.shape == (2, 4, 5, 3) and pixels.dtype == np.uint8
    assert pixels.min() == 0 and pixels.max() == 255
    buffer = io.BytesIO()
    Image.fromarray(pixels[1]).save(buffer, format="PNG")
    assert np.array_equal(np.array(Image.open(buffer).convert("RGB")), pixels[1])


def test_turning_point_hook_sees_each_coarse_stage_as_it_ends_and_changes_nothing():
    net, seen = ConvDenoiser(), []
    hook = lambda stage, t, y: seen.append((stage, t, tuple(y.shape), y.dtype))
    with_hook = sample(net.predict_x0, SCHEDULE, [3, 4], method="ddim", steps=9, on_turning_point=hook)
    without = sample(net.predict_x0, SCHEDULE, [3, 4], method="ddim", steps=9)
    assert seen == [(2, 600, (2, 3, 4, 4), torch.float32), (1, 300, (2, 3, 8, 8), torch.float32)]
    assert torch.equal(with_hook, without)
