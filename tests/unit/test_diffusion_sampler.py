"""Sampler contract: per-image seeds, shapes, methods and argument errors."""
import pytest
import torch

from dvdp_hr.diffusion import DVDPSchedule, sample

SCHEDULE = DVDPSchedule(16, 4, [300, 600])


class ConvDenoiser(torch.nn.Module):
    """A fixed per-image convolution: deterministic, so any batch composition gives the same image."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, y, t):
        k = SCHEDULE.stage_of(int(t[0]))
        return torch.tanh(self.conv(y * SCHEDULE.input_scale(t)[:, None, None, None]) + 0.01 * k)


@pytest.mark.parametrize("method, steps", [("ancestral", None), ("ancestral", 12), ("ddim", 12)])
def test_image_depends_only_on_its_seed(method, steps):
    net = ConvDenoiser()
    batch = sample(net, SCHEDULE, [5, 6, 7], method=method, steps=steps, eta=0.5)
    alone = sample(net, SCHEDULE, [6], method=method, steps=steps, eta=0.5)
    assert batch.shape == (3, 3, 16, 16) and batch.abs().max() <= 1
    assert torch.allclose(batch[1:2], alone, atol=1e-5)  # conv kernels may round per batch size
    assert not torch.allclose(batch[0], batch[1], atol=1e-2)
    pointwise = lambda y, t: torch.tanh(y * SCHEDULE.input_scale(t)[:, None, None, None])
    batch = sample(pointwise, SCHEDULE, [5, 6, 7], method=method, steps=steps, eta=0.5)
    assert torch.equal(batch[1:2], sample(pointwise, SCHEDULE, [6], method=method, steps=steps, eta=0.5))


def test_ddim_eta_zero_is_deterministic_given_the_start_noise_and_differs_from_ancestral():
    net = ConvDenoiser()
    a = sample(net, SCHEDULE, [1, 2], method="ddim", steps=10, eta=0.0)
    b = sample(net, SCHEDULE, [1, 2], method="ddim", steps=10, eta=0.0)
    c = sample(net, SCHEDULE, [1, 2], method="ancestral", steps=10)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_denoiser_sees_one_stage_per_call_at_its_resolution():
    seen = []

    def spy(y, t):
        seen.append((int(t[0]), y.shape[-1], SCHEDULE.stage_of_batch(t)))
        return torch.zeros_like(y)

    sample(spy, SCHEDULE, [0, 1], channels=1, method="ddim", steps=9)
    assert len(seen) == 9
    assert all(size == 16 >> stage for _, size, stage in seen)
    assert {300, 600} <= {t for t, _, _ in seen}


def test_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        sample(lambda y, t: y, SCHEDULE, [0], method="euler")
    with pytest.raises(ValueError, match="turning point"):
        sample(lambda y, t: y, SCHEDULE, [0], steps=[1000, 500, 0])
    with pytest.raises(ValueError, match="variance_correction"):
        sample(lambda y, t: y, SCHEDULE, [0], variance_correction=[0.1])


def test_clip_holds_with_the_variance_correction():
    near_edge = lambda y, t: torch.full_like(y, 0.99)
    out = sample(near_edge, SCHEDULE, [0, 1], method="ddim", steps=20, variance_correction=[0.05, 0.2])
    assert float(out.abs().max()) <= 1.0
    unclipped = sample(near_edge, SCHEDULE, [0, 1], method="ddim", steps=20, variance_correction=[0.05, 0.2],
                       clip=False)
    assert float(unclipped.abs().max()) > 1.0  # the correction's noise does reach past the edge


def test_low_precision_sampling_state_is_rejected():
    with pytest.raises(ValueError, match="autocast"):
        sample(lambda y, t: y, SCHEDULE, [0], dtype=torch.bfloat16)
