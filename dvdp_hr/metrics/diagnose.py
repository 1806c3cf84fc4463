"""`dvdp-hr swd` (two image sources) and `dvdp-hr stage-metrics` (a model's stages vs the data).

Both run on every rank: generation by the batch plan, reference images by units (the first --count
images of the source, in source order), descriptors gathered to every rank in key order, so the
scores do not depend on the number of ranks.
"""
from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator

import numpy as np

from dvdp_hr.distributed.collect import leave_ranks

from .sources import first_images, read_unit, resolve_units
from .stages import StageDescriptors, stage_report, stage_times
from .swd import SWDConfig


def source_batches(source: str, count: int, batch: int, rank: int, world: int,
                   resolution: int | None = None) -> Iterator[tuple[list[int], np.ndarray]]:
    """(global indices, uint8 NHWC) of this rank's share of the first `count` images of a source."""
    from .evaluate import shared_units

    units, _ = shared_units(source, batch, resolution) if world > 1 else resolve_units(source, batch, resolution)
    for i, (offset, unit, take) in enumerate(first_images(units, count)):
        if i % world != rank:
            continue
        images = list(itertools.islice(read_unit(unit), take))
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            yield list(range(offset + start, offset + start + len(chunk))), np.stack(chunk)


def _descriptors_of(source: str, count: int, batch: int, cfg: SWDConfig, ranks, resolution, schedule):
    desc = StageDescriptors(schedule, cfg)
    for keys, images in source_batches(source, count, batch, ranks.rank, ranks.world_size, resolution):
        desc.add_final(keys, images)
    return desc


def run_swd(images: str, ref_images: str, count: int, cfg: SWDConfig = SWDConfig(), batch: int = 32,
            resolution: int | None = None, out_json: str | None = None) -> dict:
    """SWD between the first `count` images of two sources of one resolution."""
    from dvdp_hr.diffusion import DVDPSchedule
    from dvdp_hr.sampling.run import join_ranks

    ranks = join_ranks()
    first = next(source_batches(images, 1, 1, 0, 1, resolution))[1]
    size = first.shape[1]
    schedule = DVDPSchedule(size, size)  # one stage: StageDescriptors' bookkeeping at one resolution
    a = _descriptors_of(images, count, batch, cfg, ranks, resolution, schedule)
    b = _descriptors_of(ref_images, count, batch, cfg, ranks, resolution, schedule)
    result = {"images": os.path.abspath(images), "ref_images": os.path.abspath(ref_images), "count": count,
              **stage_report(a, b)[0]}
    _report(result, out_json, ranks)
    leave_ranks()
    return result


def run_stage_metrics(model_path: str, data: str, count: int, steps: int = 50, method: str = "ddim",
                      eta: float = 0.0, batch: int | None = None, precision: str = "auto", device: str = "auto",
                      cfg: SWDConfig = SWDConfig(), seed_start: int = 0, checkpoint: str | None = None,
                      out_json: str | None = None) -> dict:
    """Per-stage SWD of `count` samples (seeds seed_start...) against the first `count` data images."""
    from dvdp_hr.sampling import batch_plan, deal, iter_batches
    from dvdp_hr.sampling.engine import default_batch, resolve_precision
    from dvdp_hr.sampling.run import join_ranks, pick_device
    from dvdp_hr.train.samples import load_model

    ranks = join_ranks()
    dev = pick_device(device, ranks)
    model, schedule = load_model(model_path, checkpoint)
    precision = resolve_precision(precision, dev)
    batch = batch or default_batch(schedule.resolution, precision)
    generated, reference = StageDescriptors(schedule, cfg), StageDescriptors(schedule, cfg)
    mine = deal(batch_plan(range(seed_start, seed_start + count), batch), ranks.rank, ranks.world_size)
    for seeds, images in iter_batches(model.to(dev), schedule, mine, steps=steps, method=method, eta=eta,
                                      device=dev, precision=precision, on_turning_point=generated.hook):
        generated.add_final(seeds, images)
    for keys, images in source_batches(data, count, batch, ranks.rank, ranks.world_size, schedule.resolution):
        reference.add_reference(keys, images, stage_times(schedule), cfg.seed)
    report = stage_report(generated, reference)
    result = {"model": os.path.abspath(model_path), "data": os.path.abspath(data), "count": count, "steps": steps,
              "method": method, "stages": {str(k): v for k, v in report.items()}}
    _report(result, out_json, ranks)
    leave_ranks()
    return result


def format_stage_table(result: dict) -> str:
    rows = ["| stage | resolution | t | noise std (pixel units) | SWD mean (x1e3) |", "|---|---|---|---|---|"]
    for stage, r in sorted(result["stages"].items(), key=lambda kv: -int(kv[0])):
        rows.append(f"| {stage} | {r['resolution']} | {r['t']} | {r['noise_std']:.3f} | {r['swd_mean']:.2f} |")
    return "\n".join(rows)


def _report(result: dict, out_json: str | None, ranks) -> None:
    if ranks.rank != 0:
        return
    print(json.dumps(result), flush=True)
    if "stages" in result:
        print(format_stage_table(result), flush=True)
    if out_json:
        os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
        with open(out_json, "w") as fh:
            json.dump(result, fh, indent=1)
