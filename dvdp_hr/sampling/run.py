"""`dvdp-hr sample`: a PNG per seed into a folder, on every rank, resumable; or one PNG grid.

Folder mode: rank 0 checks samples.json, removes temporaries of killed writers, lists the batches with
a missing image and broadcasts that list; each rank draws its round-robin share, writes each PNG
atomically (in a background thread, overlapping the next batch), then ranks pack the optional tar
shards and rank 0 checks that every seed is there. Rerunning the same command after a kill or a
preemption draws only the unfinished batches.
"""
from __future__ import annotations

import hashlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from dvdp_hr.distributed import env as dist_env
from dvdp_hr.distributed.collect import broadcast_object, leave_ranks

from . import outdir as od
from .engine import default_batch, gather_images, generate, iter_batches, resolve_precision
from .grid import save_grid
from .seeds import batch_plan, deal, parse_seeds


@dataclass
class SampleJob:
    model: str
    seeds: str
    outdir: str | None = None
    out: str | None = None  # grid mode
    batch: int | None = None
    steps: int = 50
    method: str = "ddim"
    eta: float = 0.0
    precision: str = "auto"
    shard_size: int = 0
    checkpoint: str | None = None
    device: str = "auto"
    progress_seconds: float = 30.0
    grid: str | None = None  # uniform | logsnr | descending times "1000,750,..."; None: the schedule's
    # short-ramp correction with the model config's band variances: on | off | auto (on when the config
    # has them); off by default: it helps the Gaussian oracle but hurt trained models (schedule_ab)
    variance_correction: str = "off"


def join_ranks() -> dist_env.DistEnv:
    """The launcher's ranks; a process group only when there is more than one rank."""
    if dist_env.detect().world_size > 1:
        return dist_env.init_process_group()
    return dist_env.DistEnv(0, 1, 0)


def pick_device(name: str, ranks: dist_env.DistEnv) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", dist_env.device_index(ranks.local_rank))
    return torch.device(name)


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over the weights (names, dtypes, bytes): which model drew a sample folder."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def run_sample(job: SampleJob) -> int:
    from dvdp_hr.train.samples import load_model

    ranks = join_ranks()
    device = pick_device(job.device, ranks)
    torch.backends.cudnn.benchmark = False  # timing-based algorithm choice could differ between ranks
    model, schedule = load_model(job.model, job.checkpoint)
    precision = resolve_precision(job.precision, device)
    batch = job.batch or default_batch(schedule.resolution, precision)
    seeds = parse_seeds(job.seeds)
    options = _sampler_options(job)
    if job.out:
        return _grid(job, model.to(device), schedule, seeds, batch, precision, device, ranks, options)
    settings = {"seeds": job.seeds, "count": len(seeds), "steps": options["steps"], "method": job.method,
                "grid": job.grid, "variance_correction": options["variance_correction"] is not None,
                "eta": job.eta if job.method == "ddim" else 1.0, "precision": precision, "batch": batch,
                "shard_size": job.shard_size, "schedule": schedule.to_dict(),
                "model": weights_digest(model) if ranks.rank == 0 else None}
    plan = batch_plan(seeds, batch)
    verdict = broadcast_object(_prepare(job.outdir, settings, plan, seeds) if ranks.rank == 0 else None)
    if "error" in verdict:
        leave_ranks()  # every rank is here: end the group cleanly, then report
        raise od.OutdirError(verdict["error"])
    mine = deal(verdict["pending"], ranks.rank, ranks.world_size)
    dist_env.print0(f"sample: {len(seeds):,} seeds in {len(plan):,} batches of {batch}; {verdict['done']:,} images "
                    f"already in {job.outdir}; {len(verdict['pending']):,} batches to draw on {ranks.world_size} "
                    f"rank(s) ({device}, {precision}, {job.method}, {job.steps} steps)")
    _draw(job, model.to(device), schedule, mine, device, precision, ranks, options)
    dist_env.barrier()
    code = _finish(job, seeds, ranks)
    leave_ranks()
    return code


def _sampler_options(job: SampleJob) -> dict:
    """steps, grid and variance correction for the sampler (an explicit grid fixes the steps)."""
    from dvdp_hr.diffusion import parse_grid
    from dvdp_hr.export import read_band_variances
    from dvdp_hr.train.confutil import ConfigError

    grid = parse_grid(job.grid) if job.grid else None
    correction = None if job.variance_correction == "off" else read_band_variances(job.model, job.checkpoint)
    if job.variance_correction == "on" and correction is None:
        raise ConfigError(f"--variance-correction needs band variances in {job.model}'s config "
                          "(schedule.band_stats.sigma_perp2): put data_tools/band_stats.py's output there, "
                          "or sample without the correction.")
    steps = None if isinstance(grid, list) else job.steps
    return {"steps": steps, "grid": grid, "variance_correction": correction}


def _prepare(outdir: str, settings: dict, plan: list[list[int]], seeds: list[int]) -> dict:
    """Rank 0: settings check, cleanup and the list of unfinished batches (or an error for all)."""
    try:
        od.check_settings(outdir, settings)
    except od.OutdirError as err:
        return {"error": str(err)}
    od.remove_temporaries(outdir)
    done = od.finished_seeds(outdir, seeds, settings["shard_size"])
    return {"pending": od.pending_batches(plan, done), "done": len(done)}


def _draw(job: SampleJob, model, schedule, mine: list[list[int]], device, precision: str, ranks,
          options: dict) -> None:
    progress = _Progress(len(mine), ranks, job.progress_seconds)
    with ThreadPoolExecutor(max_workers=2) as writer:
        writing: list = []
        for batch_seeds, pixels in iter_batches(model, schedule, mine, method=job.method, eta=job.eta,
                                                device=device, precision=precision, **options):
            for future in writing:  # at most one batch in flight: bounded memory, errors surface here
                future.result()
            writing = [writer.submit(od.write_png, job.outdir, s, p) for s, p in zip(batch_seeds, pixels)]
            progress.update(len(batch_seeds))
        for future in writing:
            future.result()
    progress.close()


def _finish(job: SampleJob, seeds: list[int], ranks) -> int:
    if job.shard_size:
        for index in deal(range(od.num_shards(len(seeds), job.shard_size)), ranks.rank, ranks.world_size):
            od.pack_shard(job.outdir, seeds, job.shard_size, index)
        dist_env.barrier()
    if ranks.rank != 0:
        return 0
    missing = sorted(set(seeds) - od.finished_seeds(job.outdir, seeds, job.shard_size))
    if missing:
        print(f"sample: {len(missing):,} seeds still missing in {job.outdir} (first {missing[:5]}); a rank "
              "failed: rerun the same command to complete the set", file=sys.stderr, flush=True)
        return 1
    print(f"sample: complete: {len(seeds):,} images in {job.outdir}", flush=True)
    return 0


def _grid(job: SampleJob, model, schedule, seeds, batch, precision, device, ranks, options: dict) -> int:
    mine = generate(model, schedule, seeds, batch=batch, method=job.method, eta=job.eta, device=device,
                    rank=ranks.rank, world=ranks.world_size, precision=precision, **options)
    size = schedule.resolution
    images = gather_images(mine, (size, size, 3))
    if ranks.rank == 0:
        print(f"wrote {save_grid([images[s] for s in seeds], job.out)}", flush=True)
    leave_ranks()
    return 0


class _Progress:
    """Rank 0's log lines: its own batches and images/s, and the rate over all ranks it implies."""

    def __init__(self, batches: int, ranks, every: float):
        self.total, self.ranks, self.every = batches, ranks, every
        self.batches = self.images = 0
        self.start = self.last = time.monotonic()

    def update(self, images: int) -> None:
        self.batches, self.images = self.batches + 1, self.images + images
        if time.monotonic() - self.last >= self.every:
            self._print()

    def close(self) -> None:
        if self.batches:
            self._print()

    def _print(self) -> None:
        self.last = time.monotonic()
        rate = self.images / max(self.last - self.start, 1e-9)
        dist_env.print0(f"sample: rank 0 drew {self.batches}/{self.total} batches ({self.images:,} images, "
                        f"{rate:.2f} img/s; ~{rate * self.ranks.world_size:.2f} img/s on {self.ranks.world_size} "
                        f"rank(s))")
