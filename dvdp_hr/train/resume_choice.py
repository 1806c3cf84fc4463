"""Which checkpoint a run resumes from: the newest one whose every file verifies on every rank.

meta.json lists each file's size and sha256; the ranks split the hashing (each file is read once)
and one all_gather_object per candidate tells every rank what all of them found, so all ranks
pick the same checkpoint. A damaged checkpoint is skipped with a warning naming its files.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from dvdp_hr.distributed import checkpoint as ckpt
from dvdp_hr.distributed import integrity
from dvdp_hr.distributed.env import print0
from dvdp_hr.distributed.objects import gather_all
from dvdp_hr.train.resume import check_resumable


@dataclass
class Resumed:
    """What the Trainer takes over from a checkpoint."""
    counters: dict
    finished: bool = False
    wandb_id: str | None = None
    loss_window: dict = field(default_factory=dict)


def finished_checkpoint(run_dir: str, cfg, world_size: int, reshard: bool = False) -> Resumed | None:
    """The run is already at train.max_images by the checkpoint `latest` names: Resumed(finished)
    (read-only, no lock: a finished run exits at once and writes nothing), else None."""
    tag = ckpt.latest_name(run_dir)
    if not tag or not ckpt.is_complete(run_dir, tag):
        return None
    try:
        meta = ckpt.read_meta(run_dir, tag)
    except (OSError, ValueError):
        return None  # unreadable: the verified walk reports it
    images, limit = meta["counters"]["images"], cfg.train.max_images
    if images < limit:
        return None
    check_resumable(meta, cfg, world_size, reshard)
    print0(f"already at {images} images >= train.max_images={limit}; nothing to train")
    return Resumed(meta["counters"], finished=True)


def _problems(run_dir: str, tag: str, rank: int, world_size: int) -> tuple[dict | None, list[str]]:
    """(meta, what this rank found wrong with its share of the checkpoint's files)."""
    try:
        meta = ckpt.read_meta(run_dir, tag)
    except (OSError, ValueError) as err:
        return None, [f"{ckpt.META}: unreadable ({err})"]
    if "files" not in meta:
        return meta, []  # written before checksums were recorded: accepted unverified
    folder = os.path.join(ckpt.checkpoints_dir(run_dir), tag)
    return meta, integrity.verify_share(folder, meta["files"], rank, world_size)


def choose_checkpoint(run_dir: str, candidates: list[str], rank: int, world_size: int) -> tuple[str, dict] | None:
    """Collective: (tag, meta) of the newest candidate valid on every rank; None if there are no
    candidates; CheckpointError if none of them verifies."""
    damaged = []
    for tag in candidates:
        meta, mine = _problems(run_dir, tag, rank, world_size)
        found = sorted({p for part in gather_all(mine) for p in part})
        if not found:
            if "files" not in meta:
                print0(f"note: checkpoint {tag} predates per-file checksums (no 'files' in its {ckpt.META}): "
                       f"resuming from it unverified.")
            return tag, meta
        damaged.append(f"{tag}: {'; '.join(found)}")
        print0(f"warning: checkpoint {tag} failed verification ({'; '.join(found)}); "
               f"trying the previous complete checkpoint.", file=sys.stderr)
    if damaged:
        root = ckpt.checkpoints_dir(run_dir)
        raise ckpt.CheckpointError(
            f"no checkpoint in {root} verifies:\n  " + "\n  ".join(damaged) +
            f"\nRestore the damaged files from a backup, or move the damaged checkpoints out of {root} "
            f"to start the run over (or train into a new --run-dir).")
    return None


__all__ = ["Resumed", "finished_checkpoint", "choose_checkpoint"]
