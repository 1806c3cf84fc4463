"""Exact Gaussian-oracle Frechet distances of DVDP vs fixed-resolution sampling on the real run's
schedules, for each sampling-grid policy (dvdp-math.md s7, s10; README "Schedules, grids and loss
weighting").

The data is the 16 px, 5-level stand-in of tests/unit/gaussian_oracle.py (band variances of
configs/ffhq1024.yaml, the same abar_t and turning points as the 1024 -> 64 run); the denoiser is
the exact posterior mean, and the output mean and covariance are propagated exactly, so every
number is free of Monte Carlo noise. The fixed-resolution sampler runs on the same grid of times.

    python bench/oracle_grids.py [--steps 25,50,100] [--full-grid]    # ~1 min on one core
    python bench/oracle_grids.py --match-cost --schedules cosine_interpolated --name oracle_grids_cost

--match-cost adds, for each logsnr cell, the uniform grid at the step count that costs the same
denoiser compute (dvdp_hr.diffusion.cost.full_resolution_calls): the grids at equal sampling cost.
"""
import argparse
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "unit"))
from common import write_results  # noqa: E402
from gaussian_oracle import (FFHQ_BAND_VARIANCES, ROOT_VARIANCE, GaussianOracle,  # noqa: E402
                             band_matched_gaussian, frechet_distance, propagate, real_run_schedules)
from dvdp_hr.diffusion import step_grid  # noqa: E402
from dvdp_hr.diffusion.cost import cost_matched_steps, full_resolution_calls  # noqa: E402

SCHEDULES = ("cosine", "cosine_interpolated", "cosine_shifted")
POLICIES = ("uniform", "logsnr")


def frechet(schedule, oracle, data, method, grid, correction=None) -> float:
    mean, cov = propagate(schedule, oracle, method, steps=grid, variance_correction=correction)
    return frechet_distance(mean, cov, *data)


def rows_for(beta_schedule: str, data, steps_list, full_grid: bool, match_cost: bool = False) -> list[dict]:
    dvdp, fixed = real_run_schedules(beta_schedule)
    oracle, fixed_oracle = GaussianOracle(dvdp, *data), GaussianOracle(fixed, *data)
    white = list(FFHQ_BAND_VARIANCES)  # the variance correction's white band prior (band_stats)
    rows = []
    cases = [(m, n, p) for m in ("ancestral", "ddim") for n in steps_list for p in POLICIES]
    cases += [(m, None, "full") for m in ("ancestral", "ddim")] if full_grid else []
    cases += [(m, cost_matched_steps(dvdp, n, "logsnr", "uniform"), "uniform") for m, n, p in cases
              if p == "logsnr"] if match_cost else []
    for method, steps, policy in cases:
        grid = step_grid(dvdp, steps, None if policy == "full" else policy)
        row = {"schedule": beta_schedule, "turning_points": dvdp.turning_points, "method": method,
               "steps": len(grid) - 1, "policy": policy, "full_res_calls": full_resolution_calls(dvdp, steps, (
                   None if policy == "full" else policy)), "dvdp": frechet(dvdp, oracle, data, method, grid),
               "fixed": frechet(fixed, fixed_oracle, data, method, grid),
               "dvdp_corrected": frechet(dvdp, oracle, data, method, grid, white)}
        rows.append(row)
        print(f"{beta_schedule:20s} {method:9s} {row['steps']:5d} {policy:8s} DVDP {row['dvdp']:.4f} "
              f"fixed {row['fixed']:.4f} corrected {row['dvdp_corrected']:.4f}", flush=True)
    return rows


def markdown(rows: list[dict], trace: float) -> list[str]:
    out = [f"16 px, 5 levels, trace(Sigma) = {trace:.2f}; FD of DVDP / fixed-resolution sampler on the same "
           f"grid; `+vc`: DVDP with `variance_correction` (white band prior from the band variances).", "",
           "| schedule (turning points) | sampler | steps | grid | full-res calls | DVDP | fixed | DVDP / fixed | DVDP +vc |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['schedule']} {r['turning_points']} | {r['method']} | {r['steps']} | {r['policy']} | "
                   f"{r['full_res_calls']:.1f} | "
                   f"{r['dvdp']:.4f} | {r['fixed']:.4f} | {r['dvdp'] / r['fixed']:.2f} | {r['dvdp_corrected']:.4f} |")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", default="25,50,100", help="comma-separated denoiser-call counts")
    p.add_argument("--schedules", default=",".join(SCHEDULES))
    p.add_argument("--full-grid", action="store_true", help="also every step (1000 calls; ~15 s a schedule)")
    p.add_argument("--match-cost", action="store_true", help="also uniform at the compute of each logsnr cell")
    p.add_argument("--name", default="oracle_grids", help="result file name under bench/results/")
    args = p.parse_args()
    torch.set_num_threads(1)  # 256 x 256 float64 algebra: one thread is fastest
    data = band_matched_gaussian(16, FFHQ_BAND_VARIANCES, ROOT_VARIANCE)
    start, rows = time.perf_counter(), []
    for name in args.schedules.split(","):
        rows += rows_for(name, data, [int(s) for s in args.steps.split(",")], args.full_grid, args.match_cost)
    trace = float(torch.trace(data[1]))
    write_results(args.name, {"rows": rows, "trace_sigma": trace, "seconds": time.perf_counter() - start},
                  markdown(rows, trace))


if __name__ == "__main__":
    main()
