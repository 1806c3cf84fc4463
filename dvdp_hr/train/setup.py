"""Building the pieces a run needs: schedule, model (with frozen untrained stages), data streams."""
from __future__ import annotations

import torch

from dvdp_hr.train.validate import build_schedule, workers_for_stage


def build_model(cfg, schedule) -> torch.nn.Module:
    """The denoiser with identical initial weights on every rank; in per_stage mode the networks
    of stages this run does not train are frozen, so they stay at their initial values."""
    from dvdp_hr.models import build_denoiser

    torch.manual_seed(cfg.train.seed)
    model = build_denoiser(cfg.model, schedule)
    if cfg.model.mode == "per_stage":
        trained = set(cfg.trained_stages())
        for k in range(schedule.num_stages):
            if k not in trained:
                model.stage_modules(k).requires_grad_(False)
    return model


def optimizer_groups(model: torch.nn.Module, cfg) -> tuple[list[dict], list[set[int]]]:
    """Parameter groups and the stages each one serves. In per_stage mode every trained stage
    network is its own group, so a step on stage k can give the other groups lr = 0: AdamW would
    otherwise keep moving them on stale momentum (and weight decay) while their gradients are zero."""
    if cfg.model.mode != "per_stage":
        return [{"params": [p for p in model.parameters() if p.requires_grad]}], [set(cfg.trained_stages())]
    groups = [{"params": [p for p in model.stage_modules(k).parameters() if p.requires_grad]}
              for k in cfg.trained_stages()]
    return groups, [{k} for k in cfg.trained_stages()]


def make_streams(cfg, schedule, rank: int, world_size: int, reseed: int | None = None) -> dict:
    """One resumable data stream per trained stage, at that stage's resolution and micro-batch.
    `reseed`: the image count at which a resharded run restarted its streams (mixed into the seed,
    so the new order does not replay the run's start); None for the original order."""
    from dvdp_hr.data import StageStream, stage_urls

    streams = {}
    for k in cfg.trained_stages():
        seed = cfg.train.seed + 1000 * k if reseed is None else _reseeded(cfg.train.seed, k, reseed)
        res = schedule.stage_resolution(k)
        streams[k] = StageStream(stage_urls(cfg.data.shards, res), res, cfg.train.micro_batch[k],
                                 seed=seed, rank=rank, world_size=world_size,
                                 num_workers=workers_for_stage(cfg, k), shuffle_buffer=cfg.data.shuffle_buffer,
                                 flip=cfg.data.flip, pin_memory=torch.cuda.is_available())
    return streams


def _reseeded(seed: int, k: int, images: int) -> int:
    import hashlib

    digest = hashlib.sha256(f"dvdp-reshard:{seed}:{k}:{images}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1  # a non-negative 31-bit seed


__all__ = ["build_schedule", "build_model", "make_streams", "optimizer_groups"]
