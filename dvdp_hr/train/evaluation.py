"""Sample grids and evaluation during training, drawn by every rank with the sampling engine.

Every rank samples its share of the fixed seeds (batch plan by index: the same images for any
world size) under bf16 autocast on CUDA, so no rank idles while rank 0 draws and no rank holds the
whole set's activations. An evaluation scores the EMA model with the multi-scale sliced Wasserstein
distance per stage (each stage's state as it ends vs the data at that stage; no downloaded weights)
and, when Inception weights and reference statistics are configured, FID; the best checkpoint by
FID (else by the final images' SWD) is recorded in RUN/best.json and never pruned.
"""
from __future__ import annotations

import json
import os

import torch

from dvdp_hr.distributed.checkpoint import write_atomic
from dvdp_hr.distributed.integrity import read_json

BEST = "best.json"


def _engine_settings(schedule, device, batch: int) -> tuple[str, int]:
    from dvdp_hr.sampling.engine import default_batch, resolve_precision

    precision = resolve_precision("auto", torch.device(device))
    return precision, batch or default_batch(schedule.resolution, precision)


def grid_images(model, schedule, count: int, steps: int, device, rank: int, world: int) -> list | None:
    """Seeds 0..count-1 sampled by all ranks and gathered (collective); uint8 HWC images on rank 0."""
    from dvdp_hr.sampling import gather_images, generate

    precision, batch = _engine_settings(schedule, device, 0)
    batch = min(batch, max(1, -(-count // world)))  # at least one batch per rank where count allows
    mine = generate(model, schedule, list(range(count)), batch=batch, steps=steps, device=device, rank=rank,
                    world=world, precision=precision)
    res = schedule.resolution
    images = gather_images(mine, (res, res, 3))
    return [images[s] for s in range(count)] if rank == 0 else None


def save_grid(images: list, path: str) -> str:
    from dvdp_hr.sampling.grid import save_grid as save

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return save(images, path)


def evaluate(model, schedule, eval_cfg, shards: str, device, rank: int, world: int) -> dict:
    """{"swd/stage<k>": ..., "swd": final images, "fid"?: ...} on every rank (collective)."""
    from dvdp_hr.metrics.diagnose import source_batches
    from dvdp_hr.metrics.stages import StageDescriptors, stage_report, stage_times
    from dvdp_hr.metrics.swd import SWDConfig
    from dvdp_hr.sampling import batch_plan, deal, iter_batches

    precision, batch = _engine_settings(schedule, device, eval_cfg.batch)
    swd_cfg = SWDConfig()
    generated, reference = StageDescriptors(schedule, swd_cfg), StageDescriptors(schedule, swd_cfg)
    fid = _FidAccumulator(eval_cfg, device)
    mine = deal(batch_plan(range(eval_cfg.count), batch), rank, world)
    for seeds, images in iter_batches(model, schedule, mine, steps=eval_cfg.steps, device=device,
                                      precision=precision, on_turning_point=generated.hook):
        generated.add_final(seeds, images)
        fid.add(seeds, images)
    for keys, images in source_batches(shards, eval_cfg.count, batch, rank, world, schedule.resolution):
        reference.add_reference(keys, images, stage_times(schedule), swd_cfg.seed)
    report = stage_report(generated, reference)
    metrics = {f"swd/stage{k}": r["swd_mean"] for k, r in report.items()}
    metrics["swd"] = report[0]["swd_mean"]
    metrics.update(fid.scores())
    return metrics


class _FidAccumulator:
    """FID beside SWD when evaluation.inception and evaluation.ref_stats are set."""

    def __init__(self, eval_cfg, device):
        self.enabled = bool(eval_cfg.inception and eval_cfg.ref_stats)
        if self.enabled:
            from dvdp_hr.metrics.features import load_inception
            from dvdp_hr.metrics.fid import FeatureStats

            self.ref, self.device = eval_cfg.ref_stats, device
            self.extractor, self.stats = load_inception(eval_cfg.inception, device), FeatureStats()

    def add(self, seeds, images) -> None:
        if self.enabled:
            from dvdp_hr.metrics.evaluate import image_stats

            image_stats(dict(zip(seeds, images)), self.extractor, self.device, stats=self.stats)

    def scores(self) -> dict:
        if not self.enabled:
            return {}
        from dvdp_hr.metrics.evaluate import common_dim, scores

        local_dim = self.stats.sum.shape[0] if self.stats.sum is not None else 0
        stats = self.stats.reduced(common_dim(local_dim))
        return {"fid": scores(stats, self.ref)["fid"]}


def best_metric(metrics: dict) -> str:
    return "fid" if "fid" in metrics else "swd"


def record_best(run_dir: str, metrics: dict, images: int, tag: str) -> dict | None:
    """Rank 0: RUN/best.json names the checkpoint with the lowest metric so far; returns it when
    this evaluation is the new best."""
    path, key = os.path.join(run_dir, BEST), best_metric(metrics)
    best = read_best(run_dir)
    if best is not None and best.get("metric") == key and best["value"] <= metrics[key]:
        return None
    best = {"metric": key, "value": metrics[key], "images": images, "tag": tag}
    write_atomic(path, json.dumps(best, indent=1))
    return best


def read_best(run_dir: str) -> dict | None:
    return read_json(os.path.join(run_dir, BEST))
