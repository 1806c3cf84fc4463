"""Checkpoint directories: atomic publication, `latest` discovery, per-rank state, provenance.

Layout: RUN/checkpoints/<tag>/ holds the DeepSpeed shards, meta.json (counters, config,
provenance), ema-<decay>.safetensors, raw.safetensors (the trained weights, consolidated fp32),
and rank-<r>.pt (RNG and data position of rank r).
A checkpoint is written as RUN/checkpoints/.tmp-<tag>/, renamed once every rank finished, and
only then named by RUN/checkpoints/latest (replaced with os.replace, so it is never half written).
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

from dvdp_hr.distributed.env import barrier, current

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


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


def find_latest(run_dir: str) -> str | None:
    """The tag named by RUN/checkpoints/latest, if it names a complete checkpoint."""
    root = checkpoints_dir(run_dir)
    pointer = os.path.join(root, LATEST)
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as fh:
        tag = fh.read().strip()
    if not tag or tag.startswith(TMP_PREFIX) or not os.path.isfile(os.path.join(root, tag, META)):
        raise CheckpointError(f"{pointer} names '{tag}', which is not a complete checkpoint; "
                              f"point it at a folder of {root} that holds {META}, or delete it to start over.")
    return tag


def list_complete(run_dir: str) -> list[str]:
    root = checkpoints_dir(run_dir)
    if not os.path.isdir(root):
        return []
    return sorted(d for d in os.listdir(root)
                  if not d.startswith(TMP_PREFIX) and os.path.isfile(os.path.join(root, d, META)))


def prune(run_dir: str, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints (never the one `latest` names)."""
    latest = find_latest(run_dir)
    for tag in list_complete(run_dir)[:-keep_last]:
        if tag != latest:
            shutil.rmtree(os.path.join(checkpoints_dir(run_dir), tag), ignore_errors=True)


def save_checkpoint(run_dir: str, tag: str, write_parts, meta: dict, keep_last: int) -> str:
    """Collective: every rank calls it. `write_parts(root, tmp_tag)` writes this rank's files into
    root/tmp_tag; rank 0 then publishes the folder and moves `latest`."""
    root = checkpoints_dir(run_dir)
    tmp_tag = TMP_PREFIX + tag
    tmp_dir, final_dir = os.path.join(root, tmp_tag), os.path.join(root, tag)
    rank = current().rank
    if rank == 0:
        for stale in [d for d in os.listdir(root) if d.startswith(TMP_PREFIX)] if os.path.isdir(root) else []:
            shutil.rmtree(os.path.join(root, stale), ignore_errors=True)
        os.makedirs(tmp_dir)
    barrier()
    write_parts(root, tmp_tag)
    barrier()  # every rank's shards are on disk
    if rank == 0:
        write_atomic(os.path.join(tmp_dir, META), json.dumps(meta, indent=1, sort_keys=True))
        if os.path.isdir(final_dir):
            shutil.rmtree(final_dir)
        os.rename(tmp_dir, final_dir)
        _fsync_dir(root)
        write_atomic(os.path.join(root, LATEST), tag)
        prune(run_dir, keep_last)
    barrier()
    return final_dir


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
