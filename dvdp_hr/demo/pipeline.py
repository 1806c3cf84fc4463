"""`dvdp-hr demo`: photographs -> shards -> band statistics -> train DVDP -> train the fixed-resolution
baseline on the same training FLOPs -> sample and score both -> plots and a summary table.
Rerunning it resumes: shards and finished training runs are kept."""
from __future__ import annotations

import json
import os
import time

from dvdp_hr.distributed.integrity import read_json
from dvdp_hr.metrics.logging import read_jsonl
from dvdp_hr.train.config import load_config
from dvdp_hr.train.confutil import ConfigError
from dvdp_hr.train.setup import build_model, build_schedule

from . import arms as A
from . import data, flops, plots, report, score


# Each arm's EMA half-life is this fraction of its own training images: the same share of its
# compute for both (EDM2, Karras et al. 2024: the best EMA length is ~5-10% of training).
EMA_FRACTION = 1 / 12


def ema_override(images: int) -> str:
    return f"ema.halflife_images=[{max(1, round(images * EMA_FRACTION))}]"


class Steps:
    """Numbered progress lines with the elapsed time."""

    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def __call__(self, what: str) -> None:
        self.done += 1
        print(f"\n[demo {self.done}/{self.total} at {time.perf_counter() - self.start:4.0f} s] {what}", flush=True)


def per_image_flops(config: str, overrides: list[str]) -> tuple[list[int], list[int]]:
    """(training FLOPs per image, resolution) for every stage of a config."""
    cfg = load_config(config, overrides)
    schedule = build_schedule(cfg)
    counts = flops.training_flops_per_image(build_model(cfg, schedule), cfg, schedule)
    return counts, [schedule.stage_resolution(k) for k in range(schedule.num_stages)]


def check_settings(run_dir: str, settings: dict) -> None:
    """The training settings of a run directory are fixed at its first run (a rerun resumes it);
    sampling settings (--count, --steps, --inception) may change."""
    path = os.path.join(run_dir, "demo.json")
    saved = read_json(path)
    if saved is not None:
        if saved != settings:
            raise ConfigError(f"{run_dir} holds a demo trained with {_flags(saved)}. Rerun with those flags to resume "
                              f"it, or train {_flags(settings)} in a new folder: dvdp-hr demo --run-dir runs/demo2 "
                              f"{_flags(settings)} (make demo DEMO_ARGS=\"...\"), or delete {run_dir}")
        return
    if os.path.isdir(run_dir) and os.listdir(run_dir):
        raise ConfigError(f"{run_dir} is not empty and holds no demo.json (an older demo's or another run's files): "
                          f"delete it or give a new --run-dir")
    os.makedirs(run_dir, exist_ok=True)
    with open(path, "w") as fh:
        json.dump(settings, fh)


def _flags(settings: dict) -> str:
    return " ".join(f"--{key.replace('_', '-')} {value}" for key, value in settings.items())


def run_demo(run_dir: str, images: int = 24000, count: int = 128, steps: int = 50, inception: str | None = None,
             nproc: int = 2, train_photos: int = 2048) -> int:
    check_settings(run_dir, {"images": images, "train_photos": train_photos, "nproc": nproc})
    step, result = Steps(6), {"nproc": nproc, "steps": steps, "count": count, "arms": []}
    step(f"data: {train_photos} training crops of scikit-image's photographs -> 64/32/16 px shards")
    data_dir = os.path.join(run_dir, "data")
    shards = data.make_training_shards(data_dir, train_photos)
    reference, floor_set = data.heldout(count, data_dir)
    bands = data.band_variances(shards)
    dvdp_overrides = [f"schedule.band_stats.sigma_perp2=[{','.join(f'{v:.6g}' for v in bands)}]", ema_override(images)]
    dvdp, fixed = A.arms(run_dir)
    print(f"band variances (finest first, orthonormal units): {[round(v, 4) for v in bands]}")

    step(f"training the DVDP arm for {images:,} images on {nproc} CPU processes ({dvdp.config})")
    A.train_arm(dvdp, shards, images, dvdp_overrides, nproc)
    dvdp_flops, dvdp_res = per_image_flops(dvdp.config, dvdp_overrides)
    dvdp_losses = read_jsonl(os.path.join(dvdp.run_dir, "loss.jsonl"))
    budget = flops.training_flops(dvdp_losses, dvdp_flops)

    fixed_flops, fixed_res = per_image_flops(fixed.config, [])
    fixed_images = round(budget / fixed_flops[0])
    step(f"training the fixed-resolution arm for {fixed_images:,} images = the same {budget / 1e12:.1f} training "
         f"TFLOPs ({fixed.config})")
    A.train_arm(fixed, shards, fixed_images, [ema_override(fixed_images)], nproc)

    step(f"sampling {count} images from each arm (DDIM {steps} steps) and scoring them against held-out photos")
    for arm, per_image, resolutions in ((dvdp, dvdp_flops, dvdp_res), (fixed, fixed_flops, fixed_res)):
        result["arms"].append(_score_arm(arm, per_image, resolutions, reference, count, steps, inception))
    result["floor"] = score.floor_swd(reference, floor_set)
    return _finish(step, result, run_dir, reference)


def _score_arm(arm, per_image, resolutions, reference, count, steps, inception) -> dict:
    print(f"{arm.label}: sampling {count} images and scoring them ...", flush=True)
    losses = read_jsonl(os.path.join(arm.run_dir, "loss.jsonl"))
    sampled = score.generate_scored(arm.run_dir, reference, count, steps)
    out = {"name": arm.name, "label": arm.label, "config": os.path.relpath(arm.config, A.CONFIGS.parent),
           "run_dir": arm.run_dir,
           "resolutions": resolutions, "train_images_per_stage": flops.images_per_stage(losses, len(per_image)),
           "train_flops_per_image": per_image, "train_flops": flops.training_flops(losses, per_image),
           "train_seconds": report.training_seconds(read_jsonl(os.path.join(arm.run_dir, "stats.jsonl"))),
           "sample_seconds_per_image": sampled["seconds"] / count,
           "sample_flops_per_image": sampled["flops_per_image"], "stages": sampled["stages"],
           "images": sampled["images"], "losses": losses}
    out["train_images"] = sum(out["train_images_per_stage"])
    if inception:
        out.update(score.inception_scores(inception, sampled["images"], reference[:count]))
    print(f"{arm.label}: SWD x1e3 {out['stages']['0']['swd_mean']:.1f}, "
          f"{out['sample_seconds_per_image']:.3f} s per image")
    return out


def _finish(step, result: dict, run_dir: str, reference) -> int:
    step("plots: loss per stage and the sample grids")
    arms = result["arms"]
    result["outputs"] = {
        "loss curves": plots.loss_figure([{"label": a["label"], "losses": a["losses"], "resolutions": a["resolutions"],
                                           "per_image_flops": a["train_flops_per_image"]} for a in arms],
                                         os.path.join(run_dir, "loss_curves.png")),
        "sample grids": plots.grids_figure(
            [(f"{a['label']}\nSWD {a['stages']['0']['swd_mean']:.1f} (first {min(64, len(a['images']))} samples)",
              a["images"]) for a in arms]
            + [(f"held-out photos\nSWD {result['floor']['swd_mean']:.1f} (floor)", reference)],
            os.path.join(run_dir, "samples.png"))}
    for a in arms:
        result["outputs"][f"{a['name']} run (checkpoints, loss.jsonl, stats.jsonl)"] = a["run_dir"]
        del a["images"], a["losses"]
    result["outputs"]["held-out photos"] = os.path.join(run_dir, "data", "heldout")
    result["outputs"]["summary"] = os.path.join(run_dir, "summary.md")
    step("summary")
    print(report.write_summary(result, run_dir), flush=True)
    return 0
