"""The Gaussian oracle on the real run's schedules (dvdp-math.md s7, s9, s10): 16 px, 5 levels
(16 -> 1, like 1024 -> 64), the band variances of configs/ffhq1024.yaml, the real abar_t and turning
points. Exact mean/covariance propagation: deterministic Frechet distances, a few seconds in all.
bench/oracle_grids.py prints the full table of the README."""
import functools
import os

import pytest
import torch

from dvdp_hr.diffusion import step_grid
from dvdp_hr.train.config import load_config
from gaussian_oracle import single_thread  # noqa: F401 - the module's autouse one-thread fixture
from gaussian_oracle import (FFHQ_BAND_VARIANCES, ROOT_VARIANCE, GaussianOracle, band_matched_gaussian,
                             frechet_distance, propagate, real_run_schedules)

MU, SIGMA = band_matched_gaussian(16, FFHQ_BAND_VARIANCES, ROOT_VARIANCE)
SHIPPED = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "ffhq1024.yaml")


@functools.cache
def oracles(beta_schedule: str):
    dvdp, fixed = real_run_schedules(beta_schedule)
    return GaussianOracle(dvdp, MU, SIGMA), GaussianOracle(fixed, MU, SIGMA)


@functools.cache
def fd(beta_schedule: str, method: str, steps: int, policy: str, which: str = "dvdp", corrected: bool = False) -> float:
    dvdp, fixed = oracles(beta_schedule)
    grid = step_grid(dvdp.schedule, steps, policy)  # the fixed sampler runs on the same times
    oracle = dvdp if which == "dvdp" else fixed
    correction = list(FFHQ_BAND_VARIANCES) if corrected else None
    mean, cov = propagate(oracle.schedule, oracle, method, steps=grid, variance_correction=correction)
    value = frechet_distance(mean, cov, MU, SIGMA)
    print(f"{beta_schedule:20s} {method:9s} {steps:4d} {policy:8s} {which:5s} vc={corrected!s:5s} FD={value:.4f}")
    return value


def test_band_matched_gaussian_gives_the_real_turning_points():
    dvdp, _ = real_run_schedules("cosine")
    assert dvdp.turning_points == [204, 468, 759, 904]
    assert real_run_schedules("cosine_interpolated")[0].turning_points == [139, 261, 421, 584]
    assert float(torch.linalg.eigvalsh(SIGMA).min()) > 0


@pytest.mark.parametrize("beta_schedule, factor", [("cosine", 1.15), ("cosine_interpolated", 1.25)])
def test_strided_ddim_stays_close_to_fixed_resolution_on_the_same_grid(beta_schedule, factor):
    fixed = fd(beta_schedule, "ddim", 50, "uniform", "fixed")
    assert fd(beta_schedule, "ddim", 50, "uniform") <= factor * fixed  # measured 1.07 and 1.18
    # the variance correction (band prior from the band statistics) more than closes the gap
    assert fd(beta_schedule, "ddim", 50, "uniform", corrected=True) < fixed


def test_ancestral_matches_fixed_resolution():
    assert fd("cosine", "ancestral", 50, "uniform") <= 1.1 * fd("cosine", "ancestral", 50, "uniform", "fixed")


def test_shipped_schedule_and_grid_are_the_best_measured():
    """configs/ffhq1024.yaml: cosine_interpolated + uniform grid, the best DDIM with the variance
    correction at 25 and 50 steps (README table; ancestral and logsnr rows in bench/oracle_grids.py)."""
    cfg = load_config(SHIPPED)
    shipped = (cfg.schedule.beta_schedule, cfg.schedule.sampling_grid)
    assert shipped == ("cosine_interpolated", "uniform")
    for steps in (25, 50):
        best = fd(*shipped[:1], "ddim", steps, shipped[1], corrected=True)
        assert best <= fd("cosine_interpolated", "ddim", steps, "logsnr", corrected=True)
        assert best <= fd("cosine", "ddim", steps, "uniform", corrected=True)
