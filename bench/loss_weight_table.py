"""Effective loss weight per t for every train.loss_weighting on a config's schedule: the table of
docs/dvdp-math.md s11 (tests/unit/test_loss_weighting.py pins the same numbers).

loss = w_low mean (P'e)^2 + w_detail mean (Q'e)^2 with e = x0_hat - x0 in the stage's pixel units;
every weighting but eps_mse has w_low = w_detail.

    python bench/loss_weight_table.py [--config configs/ffhq1024.yaml] [--times 1,70,139,...]
"""
import argparse
import math
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from dvdp_hr.diffusion import LOSS_WEIGHTINGS, loss_weights  # noqa: E402
from dvdp_hr.train.config import load_config  # noqa: E402
from dvdp_hr.train.validate import build_schedule  # noqa: E402


def default_times(schedule) -> list[int]:
    """t = 1, each turning point and the step after it, the middle of each stage, and T."""
    times = {1, schedule.num_steps}
    for k in range(schedule.num_stages):
        lo, hi = schedule.stage_bounds(k)
        times |= {lo + 1, (lo + hi) // 2, hi}
    return sorted(t for t in times if t >= 1)


def table(schedule, times: list[int], snr_gamma: float = 5.0, sigma_data: float = 0.5) -> list[str]:
    names = [w if w != "eps_mse" else "eps_mse P' / Q'" for w in LOSS_WEIGHTINGS]
    head = ["t", "stage", "gamma_t", "log-SNR px", *names]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in times:
        k = schedule.stage_of(t)
        cells = [str(t), str(k), f"{float(schedule.gamma(t, k)):.3f}", f"{schedule.pixel_logsnr(t, k):.3f}"]
        for name in LOSS_WEIGHTINGS:
            w = loss_weights(schedule, t, name, snr_gamma, sigma_data)
            low, det = float(w.low[0]), float(w.detail[0])
            cells.append(_num(low) if name != "eps_mse" else f"{_num(low)} / {_num(det)}")
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _num(x: float) -> str:
    return f"{x:.4g}" if x == 0 or 1e-3 <= abs(x) < 1e5 else f"{x:.3e}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "ffhq1024.yaml"))
    p.add_argument("--times", help="comma-separated t (default: ends, turning points, stage middles)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args()
    cfg = load_config(args.config, args.overrides)
    schedule = build_schedule(cfg)
    times = [int(t) for t in args.times.split(",")] if args.times else default_times(schedule)
    print(f"{schedule.beta_schedule}, turning points {schedule.turning_points}, snr_gamma {cfg.train.snr_gamma}, "
          f"sigma_data {cfg.train.sigma_data}, log 4 = {math.log(4):.3f}")
    print("\n".join(table(schedule, times, cfg.train.snr_gamma, cfg.train.sigma_data)))


if __name__ == "__main__":
    main()
