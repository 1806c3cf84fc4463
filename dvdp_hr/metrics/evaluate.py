"""`dvdp-hr fid` and `dvdp-hr ref-stats`: features on every rank, reduced sums, one score.

Every rank reads its own units of the source (sources.py), computes features batch by batch on its
device, and adds them to float64 sums (fid.FeatureStats); the sums are all-reduced and rank 0 turns
them into FID (and KID from gathered features). The trainer's in-memory path is `image_stats`: it
takes the uint8 images the sampling engine returns, the same bytes the PNGs hold.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from dvdp_hr.distributed import env as dist_env
from dvdp_hr.distributed.collect import leave_ranks

from . import fid as F
from .errors import EvaluationError
from .features import extract, load_inception, to_input
from .sources import Unit, read_unit, resolve_units


@dataclass
class FeatureJob:
    images: str
    batch: int = 32  # clean-fid compute_fid's default: folder features come in its very batches
    workers: int = 4
    resolution: int | None = None
    keep_features: bool = False


class _UnitInputs(torch.utils.data.Dataset):
    """Decoding and clean-resizing of whole units in loader workers."""

    def __init__(self, units: list[tuple[int, Unit]]):
        self.units = units

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, i: int):
        index, unit = self.units[i]
        images = list(read_unit(unit))
        return index, (to_input(images) if images else torch.zeros(0, 3, 299, 299))


def shared_units(path: str, batch: int, resolution: int | None = None) -> tuple[list[Unit], int | None]:
    """resolve_units on rank 0 only, broadcast (one folder listing, not one per rank; the same list on
    every rank even where a shared file system shows nodes different listings). Errors reach all ranks."""
    from dvdp_hr.distributed.collect import broadcast_object

    answer = None
    if dist_env.current().rank == 0:
        try:
            answer = ("ok", *resolve_units(path, batch, resolution))
        except EvaluationError as err:
            answer = ("error", str(err))
    answer = broadcast_object(answer)
    if answer[0] == "error":
        raise EvaluationError(answer[1])
    return answer[1], answer[2]


def source_stats(job: FeatureJob, extractor, device, rank: int = 0, world: int = 1, progress=None,
                 units: list[Unit] | None = None) -> F.FeatureStats:
    """Reduced feature statistics of a source folder (collective when world > 1)."""
    units = units if units is not None else resolve_units(job.images, job.batch, job.resolution)[0]
    mine = [(u, unit) for u, unit in enumerate(units) if u % world == rank]
    loader = torch.utils.data.DataLoader(_UnitInputs(mine), batch_size=None, num_workers=job.workers)
    stats, dim = F.FeatureStats(job.keep_features), 0
    for index, inputs in loader:
        for start in range(0, inputs.shape[0], job.batch):
            with torch.no_grad():
                feats = extractor(inputs[start:start + job.batch].to(device)).float()
            positions = torch.arange(start, start + feats.shape[0])
            stats.add(feats, torch.stack([torch.full_like(positions, index), positions], 1))
            dim = feats.shape[1]
        if progress:
            progress(inputs.shape[0])
    return stats.reduced(common_dim(dim))


def image_stats(images: dict[int, np.ndarray] | list[np.ndarray], extractor, device, batch: int = 32,
                keep_features: bool = False, stats: F.FeatureStats | None = None) -> F.FeatureStats:
    """This rank's (unreduced) statistics of in-memory uint8 HWC images, added to `stats` when given;
    call .reduced(dim) on every rank. Keys are the seeds: gathered KID features come in seed order.
    Feature batches are cut from the images given; to get scores equal to the last bit for any world
    size, pass each engine batch on its own (the batch plan fixes which images share it)."""
    keys = sorted(images) if isinstance(images, dict) else list(range(len(images)))
    stats = stats if stats is not None else F.FeatureStats(keep_features)
    for start in range(0, len(keys), batch):
        chunk = keys[start:start + batch]
        feats = extract(extractor, [images[k] for k in chunk], device)
        stats.add(feats, torch.tensor([[0, k] for k in chunk], dtype=torch.long))
    return stats


def common_dim(dim: int) -> int:
    from dvdp_hr.distributed.collect import gather_rows

    return int(gather_rows(torch.tensor([[dim]], dtype=torch.long)).max())


def scores(stats: F.FeatureStats, ref: str, kid_seed: int = 0) -> dict:
    """FID against the reference file, and KID when both sides have features."""
    mu, sigma = stats.mean_cov()
    ref_mu, ref_sigma = F.load_stats(ref)
    if ref_mu.shape != mu.shape:
        raise EvaluationError(f"{ref} holds {ref_mu.shape[0]}-d statistics but the features are {mu.shape[0]}-d: "
                              "the reference was made with another feature network")
    out = {"fid": F.frechet_distance(mu, sigma, ref_mu, ref_sigma), "count": stats.count}
    ref_features = F.load_ref_features(ref)
    if stats.keep_features and ref_features is not None:
        out["kid"] = F.kernel_inception_distance(ref_features, stats.features(), kid_seed)
        out["kid_ref"] = F.kid_path(ref)
    return out


def _join_and_device(device: str):
    from dvdp_hr.sampling.run import join_ranks, pick_device

    ranks = join_ranks()
    return ranks, pick_device(device, ranks)


def _printer(total: int | None, ranks):
    """Rank 0's progress lines: its own images and rate (every 30 s)."""
    state = {"n": 0, "start": time.monotonic(), "last": time.monotonic()}

    def update(n: int) -> None:
        state["n"] += n
        now = time.monotonic()
        if now - state["last"] >= 30:
            state["last"] = now
            rate = state["n"] / (now - state["start"])
            share = f" of ~{total // ranks.world_size:,}" if total else ""
            dist_env.print0(f"features: rank 0 {state['n']:,}{share} images, {rate:.1f} img/s")

    return update


def run_fid(images: str, ref: str, inception: str | None = None, batch: int = 32, workers: int = 4,
            kid: bool = True, kid_seed: int = 0, out_json: str | None = None, device: str = "auto",
            resolution: int | None = None, extractor=None) -> dict:
    """`dvdp-hr fid`: FID (and KID) of a source folder against reference statistics."""
    ranks, dev = _join_and_device(device)
    F.load_stats(ref)  # a missing reference fails before any feature is computed
    extractor = extractor or load_inception(inception, dev)
    keep = kid and F.load_ref_features(ref) is not None
    job = FeatureJob(images, batch, workers, resolution, keep_features=keep)
    units, total = shared_units(images, batch, resolution)
    stats = source_stats(job, extractor, dev, ranks.rank, ranks.world_size, _printer(total, ranks), units)
    result = {"images": os.path.abspath(images), "ref": os.path.abspath(ref), "world_size": ranks.world_size,
              **(scores(stats, ref, kid_seed) if ranks.rank == 0 else {})}
    if kid and not keep:
        result["kid_note"] = f"no {F.kid_path(ref)}: KID needs reference features (ref-stats --kid)"
    if ranks.rank == 0:
        _report(result, out_json)
    leave_ranks()
    return result


def run_ref_stats(source: str, out: str, resolution: int | None = None, inception: str | None = None,
                  batch: int = 32, workers: int = 4, kid: bool = False, device: str = "auto", extractor=None) -> dict:
    """`dvdp-hr ref-stats`: clean-fid-format mu/sigma (and KID features) of a shard set or folder."""
    ranks, dev = _join_and_device(device)
    extractor = extractor or load_inception(inception, dev)
    job = FeatureJob(source, batch, workers, resolution, keep_features=kid)
    units, total = shared_units(source, batch, resolution)
    stats = source_stats(job, extractor, dev, ranks.rank, ranks.world_size, _printer(total, ranks), units)
    result = {"source": os.path.abspath(source), "resolution": resolution, "count": stats.count, "out": out}
    if ranks.rank == 0:
        result["written"] = F.save_stats(out, stats, {"source": result["source"], "mode": "clean"}, with_features=kid)
        _report(result, None)
    leave_ranks()
    return result


def _report(result: dict, out_json: str | None) -> None:
    print(json.dumps(result), flush=True)
    if out_json:
        os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
        with open(out_json, "w") as fh:
            json.dump(result, fh, indent=1)
