"""Per-stage diagnostics: the pixel-unit view of a stage's state, and a weak stage found by its score.

Gaussian data with the exact posterior-mean denoiser (gaussian_oracle.py) samples every stage right;
scaling the stage-1 estimates down (a weak stage-1 network) must raise stage 1's score and leave the
root stage's score untouched."""
import torch
import torch.nn.functional as F

from dvdp_hr.diffusion import DVDPSchedule, down, sample
from dvdp_hr.metrics.stages import (StageDescriptors, noised_reference, pixel_noise_std, stage_report, stage_times,
                                    state_to_pixels)
from dvdp_hr.metrics.swd import SWDConfig
from gaussian_oracle import GaussianOracle, smooth_gaussian

SCHEDULE = DVDPSchedule(16, 4, [300, 600])
CFG = SWDConfig(patch=3, per_image=32, directions=64, repeats=2, min_resolution=4)  # 4 px root: 3x3 patches
N = 128


def test_a_stage_state_in_pixel_units_is_the_downsampled_image_plus_known_noise():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(64, 3, 16, 16, generator=g) * 2 - 1
    for k, t in ((1, 300), (2, 600)):
        y_fine = SCHEDULE.q_sample(x0, t, torch.randn(64, 3, 32 >> k, 32 >> k, generator=g))  # stage k-1, gamma = 0
        y = down(y_fine)  # dvdp-math.md s4: the stage-k state at tau_k
        residual = state_to_pixels(SCHEDULE, y, t, k) - F.avg_pool2d(x0, 2**k)
        assert abs(residual.mean()) < 0.05 * pixel_noise_std(SCHEDULE, t, k)
        assert abs(residual.std() / pixel_noise_std(SCHEDULE, t, k) - 1) < 0.05


def _stage_scores(oracle, reference, weak_stage=None):
    def denoiser(y, t):
        x0 = oracle.denoiser(y, t)
        return 0.3 * x0 if SCHEDULE.stage_of(int(t[0])) == weak_stage else x0

    generated, seeds = StageDescriptors(SCHEDULE, CFG, channels=1), list(range(1000, 1000 + N))
    images = sample(denoiser, SCHEDULE, seeds, channels=1, method="ancestral", steps=30, clip=False,
                    on_turning_point=lambda k, t, y: generated.hook(seeds, k, t, y))
    generated.add(0, 0, images, seeds)
    return {k: r["swd_mean"] for k, r in stage_report(generated, reference).items()}


def test_the_weak_stage_stands_out():
    mu, sigma = smooth_gaussian(16, length=2.0, std=0.4)
    oracle = GaussianOracle(SCHEDULE, mu, sigma)
    noise = torch.randn(N, 256, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    data = (mu + noise @ torch.linalg.cholesky(sigma).T).float().reshape(N, 1, 16, 16)
    reference = StageDescriptors(SCHEDULE, CFG, channels=1)
    for k, t in stage_times(SCHEDULE).items():
        reference.add(k, t, noised_reference(data, SCHEDULE, k, t, range(N)), range(N))
    good, weak = _stage_scores(oracle, reference), _stage_scores(oracle, reference, weak_stage=1)
    assert weak[2] == good[2]  # the root stage runs before the weak one
    assert weak[1] > 1.5 * good[1] and weak[1] > 1.5 * weak[2]


def test_stage_metrics_command_reports_every_stage(tmp_path):
    import json

    from dvdp_hr.cli import main
    from sampling_helpers import image_folder, tiny_export

    model, data = tiny_export(tmp_path / "tiny.safetensors"), image_folder(tmp_path / "data", 4, seed=0, size=64)
    assert main(["stage-metrics", "--model", model, "--data", data, "--count", "4", "--steps", "4", "--batch", "2",
                 "--per-image", "8", "--directions", "8", "--repeats", "1", "--json", str(tmp_path / "s.json")]) == 0
    stages = json.loads((tmp_path / "s.json").read_text())["stages"]
    assert [(k, v["resolution"], v["t"]) for k, v in sorted(stages.items())] == [("0", 64, 0), ("1", 32, 300),
                                                                                  ("2", 16, 600)]
    assert all(v["swd_mean"] > 0 for v in stages.values())
