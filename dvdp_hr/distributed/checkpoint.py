"""Checkpoint directories: atomic publication, `latest` discovery, per-rank state, provenance.

Layout: RUN/checkpoints/<tag>/ holds the DeepSpeed shards, meta.json (counters, config,
provenance, and the size and sha256 of every other file), ema-<decay>.safetensors,
raw.safetensors (the consolidated fp32 trained weights; final and stop checkpoints unless
checkpoint.raw_weights=every), config.yaml and rank-<r>.pt (RNG and data position of rank r).
A checkpoint is written as RUN/checkpoints/.tmp-<tag>/, every file fsynced by the rank that wrote
it, renamed once meta.json is in, and only then named by RUN/checkpoints/latest (replaced with
os.replace, so it is never half written).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from importlib import metadata

import numpy as np
import torch

from dvdp_hr.distributed import integrity
from dvdp_hr.distributed.integrity import write_atomic  # noqa: F401 - re-exported for callers
from dvdp_hr.distributed.env import barrier, current
from dvdp_hr.distributed.objects import gather_all

LATEST = "latest"
META = "meta.json"
TMP_PREFIX = ".tmp-"
RAW_WEIGHTS = "raw.safetensors"


class CheckpointError(RuntimeError):
    pass


def checkpoints_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def make_tag(images: int) -> str:
    return f"img{images:012d}"


def latest_name(run_dir: str) -> str | None:
    """What RUN/checkpoints/latest says, unchecked (None if there is no such file)."""
    pointer = os.path.join(checkpoints_dir(run_dir), LATEST)
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as fh:
        return fh.read().strip()


def is_complete(run_dir: str, tag: str) -> bool:
    return bool(tag) and not tag.startswith(TMP_PREFIX) and os.path.isfile(
        os.path.join(checkpoints_dir(run_dir), tag, META))


def find_latest(run_dir: str) -> str | None:
    """The tag named by RUN/checkpoints/latest, if it names a complete checkpoint."""
    tag = latest_name(run_dir)
    if tag is None:
        return None
    if not is_complete(run_dir, tag):
        root = checkpoints_dir(run_dir)
        raise CheckpointError(f"{os.path.join(root, LATEST)} names '{tag}', which is not a complete checkpoint; "
                              f"point it at a folder of {root} that holds {META}, or delete it to start over.")
    return tag


def list_complete(run_dir: str) -> list[str]:
    root = checkpoints_dir(run_dir)
    if not os.path.isdir(root):
        return []
    return sorted(d for d in os.listdir(root) if is_complete(run_dir, d))


def resume_candidates(run_dir: str) -> list[str]:
    """Complete checkpoints, newest first, none newer than the one `latest` names (a `latest` moved
    back by hand is honoured; without `latest`, all complete ones)."""
    latest = latest_name(run_dir)
    return [t for t in reversed(list_complete(run_dir)) if not latest or t <= latest]


def prune(run_dir: str, keep_last: int, keep_every_images: int = 0) -> None:
    """Keep the newest `keep_last` complete checkpoints up to `latest`, and the first one past every
    multiple of `keep_every_images` (milestones to roll back to); never touch a newer one (a damaged
    checkpoint skipped by a resume must not push valid fallbacks out)."""
    root, latest = checkpoints_dir(run_dir), latest_name(run_dir)
    done = [t for t in list_complete(run_dir) if latest and t <= latest]
    keep = set(done[-keep_last:]) | milestones(done, keep_every_images) | _best_tag(run_dir)
    for tag in done:
        if tag not in keep:
            _delete(root, tag)


def _best_tag(run_dir: str) -> set[str]:
    """The checkpoint RUN/best.json names (the evaluation's best so far), kept whatever its age."""
    try:
        with open(os.path.join(run_dir, "best.json")) as fh:
            return {json.load(fh)["tag"]}
    except (OSError, ValueError, KeyError):
        return set()


def milestones(tags: list[str], every_images: int) -> set[str]:
    """The first tag (in image order) of each bucket images // every_images; none when 0."""
    if every_images <= 0:
        return set()
    first: dict[int, str] = {}
    for tag in sorted(tags):
        first.setdefault(int(tag[len("img"):]) // every_images, tag)
    return set(first.values())


def _delete(root: str, tag: str) -> None:
    """Renamed out of the complete set first: a deletion cut short never leaves a folder that still
    looks complete (it is a stale .tmp- folder, removed at the next save)."""
    doomed = os.path.join(root, f"{TMP_PREFIX}pruned-{tag}")
    os.rename(os.path.join(root, tag), doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_stale_tmp(run_dir: str, keep: str | None = None) -> None:
    """Delete unpublished .tmp-<tag> folders (left by a crash or a failed writer) except `keep`."""
    root = checkpoints_dir(run_dir)
    for name in os.listdir(root) if os.path.isdir(root) else []:
        if name.startswith(TMP_PREFIX) and name != keep:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def publish(run_dir: str, tag: str, meta: dict, keep_last: int, keep_every_images: int = 0) -> str:
    """Rank 0, once every file of .tmp-<tag> is on disk and listed in meta["files"]: write
    meta.json, rename the folder to <tag>, move `latest`, prune."""
    root = checkpoints_dir(run_dir)
    tmp_dir, final_dir = os.path.join(root, TMP_PREFIX + tag), os.path.join(root, tag)
    write_atomic(os.path.join(tmp_dir, META), json.dumps(meta, indent=1, sort_keys=True))
    if os.path.isdir(final_dir):
        shutil.rmtree(final_dir)
    os.rename(tmp_dir, final_dir)
    integrity.fsync_dir(root)
    write_atomic(os.path.join(root, LATEST), tag)
    prune(run_dir, keep_last, keep_every_images)
    remove_stale_tmp(run_dir)
    return final_dir


def save_checkpoint(run_dir: str, tag: str, write_parts, meta: dict, keep_last: int) -> str:
    """Collective, all in the foreground (tools and tests; the trainer overlaps rank 0's part with
    training, see dvdp_hr.train.checkpointing). `write_parts(root, tmp_tag)` writes this rank's
    files into root/tmp_tag; files named for no rank belong to rank 0."""
    root = checkpoints_dir(run_dir)
    tmp_dir = os.path.join(root, TMP_PREFIX + tag)
    rank = current().rank
    if rank == 0:
        remove_stale_tmp(run_dir)
        os.makedirs(tmp_dir)
    barrier()
    write_parts(root, TMP_PREFIX + tag)
    barrier()  # every rank's files are in the folder
    sealed = gather_all(integrity.seal_all(tmp_dir, integrity.own_files(tmp_dir, rank, current().world_size)))
    if rank == 0:
        files = {name: entry for part in sealed for name, entry in part.items() if name != META}
        publish(run_dir, tag, {**meta, "files": dict(sorted(files.items()))}, keep_last)
    barrier()
    return os.path.join(root, tag)


def read_meta(run_dir: str, tag: str) -> dict:
    path = os.path.join(checkpoints_dir(run_dir), tag, META)
    if not os.path.isfile(path):
        raise CheckpointError(f"No checkpoint '{tag}' in {checkpoints_dir(run_dir)} (missing {META}); "
                              f"complete ones: {list_complete(run_dir)}.")
    with open(path) as fh:
        return json.load(fh)


# ---- per-rank RNG state ----
def capture_rng() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_version": random.getstate()[0],
             "numpy": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_state_path(ckpt_dir: str, rank: int) -> str:
    return os.path.join(ckpt_dir, f"rank-{rank:05d}.pt")


def save_rank_state(ckpt_dir: str, rank: int, state: dict) -> None:
    torch.save(state, rank_state_path(ckpt_dir, rank))


def save_raw_weights(ckpt_dir: str, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(ckpt_dir, RAW_WEIGHTS))


def load_rank_state(ckpt_dir: str, rank: int) -> dict:
    path = rank_state_path(ckpt_dir, rank)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is missing: the checkpoint was written by fewer ranks.")
    return torch.load(path, weights_only=True)


# ---- provenance ----
def _git_commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    commit = out.stdout.strip() or "unknown"
    return commit + ("-dirty" if dirty.stdout.strip() else "")


def provenance(manifest_hash: str | None) -> dict:
    versions = {}
    for pkg in ("dvdp_hr", "torch", "deepspeed", "webdataset", "safetensors", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"git_commit": _git_commit(), "versions": versions, "shard_manifest_sha256": manifest_hash}
