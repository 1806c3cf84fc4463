"""A/B of the noise schedule on real photographs: (a) the schedule before issue 11 vs (b) the one
configs/ffhq1024.yaml ships (dvdp-math.md s9-s12), same tiny network, same number of training
images, several seeds; sample quality by the multi-scale sliced Wasserstein distance (SWD, Karras
et al. 2018; dvdp_hr.metrics.swd: no downloaded weights) against held-out photographs.

Both arms train configs/tiny_cpu.yaml's network (64 -> 32 -> 16) on crops of scikit-image's
photographs (dvdp_hr.train.demo_data.photo_crops), with turning points from the band rule on the
crops' own band variances. (a): cosine betas, stage weights by timestep share, min-SNR in orthonormal
units, uniform grid. (b): ffhq1024.yaml's beta_schedule, stage_weighting, loss_weighting and
sampling_grid. Sampling: DDIM at --steps under each --grids policy (dvdp_hr.diffusion.grid), with
the variance correction as an extra variant when --variance-correction is given.

    python bench/schedule_ab.py --variance-correction   # schedule_ab.md: both arms, CPU ~25 min
    python bench/schedule_ab.py --arms b_shipped --grids uniform,logsnr --steps 50 --match-cost \
        --name schedule_grid_ab                        # the grid policy on trained models, ~30 min
    python bench/schedule_ab.py --device cuda --images 200000 --count 1024 --name schedule_ab.cuda
"""
import argparse
import copy
import pathlib
import statistics
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import write_results  # noqa: E402
from dvdp_hr.data import BandStats  # noqa: E402
from dvdp_hr.diffusion import sample, training_loss  # noqa: E402
from dvdp_hr.diffusion.cost import cost_matched_steps, full_resolution_calls  # noqa: E402
from dvdp_hr.metrics.swd import SWDConfig, swd  # noqa: E402
from dvdp_hr.train.config import load_config  # noqa: E402
from dvdp_hr.train.demo_data import photo_crops  # noqa: E402
from dvdp_hr.train.lr import learning_rate  # noqa: E402
from dvdp_hr.train.plan import stage_for_step, stage_weights  # noqa: E402
from dvdp_hr.train.setup import build_model, build_schedule  # noqa: E402

TINY, SHIPPED = ROOT / "configs" / "tiny_cpu.yaml", ROOT / "configs" / "ffhq1024.yaml"
BEFORE = {"schedule.beta_schedule": "cosine", "train.stage_weighting": "timestep_share",
          "train.loss_weighting": "min_snr_orthonormal", "schedule.sampling_grid": "uniform"}
CHOSEN_KEYS = tuple(BEFORE) + ("train.snr_gamma",)


def shipped_choices() -> dict:
    cfg = load_config(str(SHIPPED))
    return {key: getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1]) for key in CHOSEN_KEYS}


def images_tensor(count: int, seed: int) -> torch.Tensor:
    """Photo crops as float [N, 3, 64, 64] in [-1, 1]."""
    return torch.from_numpy(photo_crops(count, 64, seed)).permute(0, 3, 1, 2).float() / 127.5 - 1


def band_variances(images: torch.Tensor) -> list[float]:
    stats = BandStats(64, 16)
    stats.update(images.double())
    return [band["var_orthonormal"] for band in stats.result()["bands"]]


def arm_config(choices: dict, bands: list[float], seed: int, images: int):
    overrides = [f"{k}={v}" for k, v in choices.items()] + [
        "schedule.turning_points=auto", f"schedule.band_stats.sigma_perp2={bands}",
        "schedule.band_stats.snr_threshold=0.03", f"train.seed={seed}", f"train.max_images={images}",
        "train.stages=null", "train.stage_weights=null"]
    return load_config(str(TINY), overrides)


def train(cfg, data: torch.Tensor, device: torch.device, halflife_images: float):
    """Plain torch training (no DeepSpeed) with the trainer's stage choice, loss and LR schedule;
    returns the EMA model (half-life in images)."""
    schedule = build_schedule(cfg)
    torch.manual_seed(cfg.train.seed)  # the initial weights too: a rerun trains the same models
    model = build_model(cfg, schedule).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=0.0)
    weights, gen = stage_weights(cfg, schedule), torch.Generator().manual_seed(cfg.train.seed)
    step, seen = 0, 0
    while seen < cfg.train.max_images:
        k = stage_for_step(cfg.train.seed, step, weights)
        images = _step(cfg, schedule, model, opt, data, k, gen, device, seen)
        decay = 0.5 ** (images / halflife_images)
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - decay)
        seen, step = seen + images, step + 1
    return ema.eval(), schedule


def _step(cfg, schedule, model, opt, data, k, gen, device, seen) -> int:
    for group in opt.param_groups:
        group["lr"] = learning_rate(seen, cfg.optim, cfg.train.max_images)
    opt.zero_grad(set_to_none=True)
    micro, accum = cfg.train.micro_batch[k], cfg.train.grad_accum[k]
    for _ in range(accum):
        x0 = data[torch.randint(len(data), (micro,), generator=gen)]
        x0 = torch.where(torch.rand(micro, 1, 1, 1, generator=gen) < 0.5, x0.flip(-1), x0).to(device)
        t = schedule.sample_timesteps(k, micro, generator=gen)
        noise = torch.randn(x0.shape[0], 3, 64 >> k, 64 >> k, generator=gen).to(device)
        y_t = schedule.q_sample(x0, t, noise)
        loss = training_loss(schedule, model(y_t, t), x0, noise, t, cfg.model.prediction, cfg.train.snr_gamma,
                             y_t=y_t, weighting=cfg.train.loss_weighting, sigma_data=cfg.train.sigma_data)
        (loss.mean() / accum).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    opt.step()
    return micro * accum


def quantised(images: torch.Tensor) -> torch.Tensor:
    """What a PNG would hold, back in [-1, 1]."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


@torch.no_grad()
def evaluate(model, schedule, reference: torch.Tensor, count: int, seed: int, grid: str, steps: int,
             correction: list | None, device: torch.device) -> dict:
    seeds = range(seed * 1_000_000, seed * 1_000_000 + count)
    images = sample(model.predict_x0, schedule, seeds, method="ddim", steps=steps, grid=grid, device=device,
                    variance_correction=correction)
    return swd(quantised(images.cpu()), reference, SWDConfig(min_resolution=16))


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        values = [r["swd"] for r in rows if r["variant"] == variant]
        summary = {"variant": variant, "seeds": len(values)}
        for key in values[0]:
            xs = [v[key] for v in values]
            summary[key] = (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)
        out.append(summary)
    return out


def paired_lines(rows: list[dict]) -> list[str]:
    """SWD of every variant minus the first one's on the same trained model (per seed): the variants
    of one arm share its models, so the paired difference is far less noisy than the two means."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    score = {(r["variant"], r["seed"]): r["swd"]["swd_mean"] for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    lines = ["", f"Paired difference on the same models, minus `{variants[0]}` (SWD mean x 1e3; negative: better):",
             "", "| variant | per seed | mean +- std |", "|---|---|---|"]
    for variant in variants[1:]:
        diffs = [score[variant, s] - score[variants[0], s] for s in seeds if (variant, s) in score]
        if not diffs or variant.split(" (")[0] != variants[0].split(" (")[0]:
            continue  # another arm (the label's first word): other models, nothing to pair
        spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        lines.append(f"| {variant} | {', '.join(f'{d:+.2f}' for d in diffs)} | {statistics.mean(diffs):+.2f} +- {spread:.2f} |")
    return lines


def markdown(summary: list[dict], floor: dict, arms: dict, args) -> list[str]:
    levels = [k for k in summary[0] if k.startswith("swd_") and k != "swd_mean"]
    lines = [f"Training images per run: {args.images:,}; generated images per run: {args.count}; reference: "
             f"{args.count} held-out photo crops; DDIM. SWD x 1e3 (lower is better), mean +- std over "
             f"seeds. Real-vs-real floor (two disjoint crop sets): {floor['swd_mean']:.2f}.", "",
             "Arms: " + "; ".join(f"{name}: {', '.join(f'{k}={v}' for k, v in c.items())}" for name, c in arms.items()),
             "", "| variant | seeds | SWD mean | " + " | ".join(levels) + " |", "|---|---|---|" + "---|" * len(levels)]
    for s in summary:
        cells = [f"{s[k][0]:.2f} +- {s[k][1]:.2f}" for k in ["swd_mean", *levels]]
        lines.append(f"| {s['variant']} | {s['seeds']} | " + " | ".join(cells) + " |")
    return lines


def sampling_variants(arm: str, schedule, bands: list[float], args):
    """(label, grid policy, steps, variance correction) for every way one trained model is sampled;
    --match-cost adds the first grid at the step count where it costs what each other grid costs."""
    corrections = [None, bands] if args.variance_correction and arm == "b_shipped" else [None]
    grids = args.grids.split(",")
    for steps in (int(s) for s in args.steps.split(",")):
        plans = [(grid, steps) for grid in grids]
        if args.match_cost:
            plans += [(grids[0], cost_matched_steps(schedule, steps, grid, grids[0])) for grid in grids[1:]]
        for grid, n in plans:
            for correction in corrections:
                label = f"{arm} ({schedule.beta_schedule} {schedule.turning_points}, DDIM {n}, grid {grid}, " \
                        f"{full_resolution_calls(schedule, n, grid):.1f} full-res calls"
                yield label + (", variance correction)" if correction else ")"), grid, n, correction


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=12000, help="training images per run (both arms)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--count", type=int, default=128, help="generated (and reference) images per run")
    p.add_argument("--train-images", type=int, default=1024, help="size of the training crop set")
    p.add_argument("--arms", default="a_before,b_shipped", help="comma list of a_before, b_shipped")
    p.add_argument("--grids", default="uniform", help="comma list of grid policies to sample each model with")
    p.add_argument("--steps", default="50", help="comma list of DDIM step counts")
    p.add_argument("--match-cost", action="store_true",
                   help="also sample the first grid at the step count where it costs what each other grid costs")
    p.add_argument("--variance-correction", action="store_true",
                   help="also sample b_shipped with the variance correction (band variances of the crops)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default="schedule_ab", help="result file name under bench/results/")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device, start = torch.device(args.device), time.perf_counter()
    data, reference = images_tensor(args.train_images, seed=1), images_tensor(args.count, seed=2)
    floor = swd(quantised(images_tensor(args.count, seed=3)), reference, SWDConfig(min_resolution=16))
    bands = band_variances(data)
    arms = {name: choices for name, choices in {"a_before": BEFORE, "b_shipped": shipped_choices()}.items()
            if name in args.arms.split(",")}
    rows = []
    for seed in range(args.seeds):
        for name, choices in arms.items():
            cfg = arm_config(choices, bands, seed, args.images)
            model, schedule = train(cfg, data.to(device), device, halflife_images=args.images / 10)
            for variant, grid, steps, correction in sampling_variants(name, schedule, bands, args):
                result = evaluate(model, schedule, reference, args.count, seed, grid, steps, correction, device)
                rows.append({"variant": variant, "seed": seed, "swd": result})
                print(f"[{time.perf_counter() - start:6.0f}s] seed {seed} {variant}: SWD {result['swd_mean']:.2f}",
                      flush=True)
    summary = summarise(rows)
    lines = markdown(summary, floor, arms, args) + paired_lines(rows)
    write_results(args.name, {"args": vars(args), "band_variances": bands, "floor": floor, "rows": rows,
                              "summary": summary, "seconds": time.perf_counter() - start}, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
