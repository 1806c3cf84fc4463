"""Checkpoint file integrity: fsync + sha256 when written, verification before a resume.

meta.json records `files: {name: {"bytes": n, "sha256": hex}}` for every file of a checkpoint
(meta.json itself excepted), so a file cut short or damaged after publication is found before
DeepSpeed unpickles it. Every rank fsyncs and hashes the files it wrote itself: on a shared
filesystem only the writing node holds their dirty pages.

Who writes what (DeepSpeed 0.19.8, no model/pipeline parallelism, dp rank = global rank):
  every rank r   [bf16_]zero_pp_rank_{r}_mp_rank_00_optim_states.pt (ZeRO 1/2/3),
                 zero_pp_rank_{r}_mp_rank_00_model_states.pt (ZeRO-3 only), rank-{r:05d}.pt (ours)
  rank 0 only    mp_rank_00_model_states.pt (ZeRO 1/2) and our EMA, raw, config.yaml and meta.json
"""
from __future__ import annotations

import hashlib
import json
import os
import re

CHUNK = 8 << 20
_PER_RANK = (re.compile(r"(?:^|_)zero_pp_rank_(\d+)_"), re.compile(r"^rank-(\d+)\.pt$"))


def writer_rank(name: str) -> int:
    """The rank that writes checkpoint file `name` (files of no particular rank: rank 0)."""
    for pattern in _PER_RANK:
        match = pattern.search(name)
        if match:
            return int(match.group(1))
    return 0


def file_names(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n)))


def own_files(folder: str, rank: int, world_size: int) -> list[str]:
    """The files of `folder` that `rank` wrote (rank 0 also claims any of ranks >= world_size)."""
    return [n for n in file_names(folder) if _owner(n, world_size) == rank]


def _owner(name: str, world_size: int) -> int:
    rank = writer_rank(name)
    return rank if rank < world_size else 0


def _digest(fh) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    while block := fh.read(CHUNK):
        digest.update(block)
        size += len(block)
    return size, digest.hexdigest()


def seal(path: str) -> dict:
    """fsync one file and return its {"bytes", "sha256"} (read back from the page cache)."""
    with open(path, "rb") as fh:
        size, digest = _digest(fh)
        os.fsync(fh.fileno())
    return {"bytes": size, "sha256": digest}


def seal_all(folder: str, names: list[str]) -> dict[str, dict]:
    sealed = {name: seal(os.path.join(folder, name)) for name in names}
    fsync_dir(folder)  # the directory entries of the new files
    return sealed


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check(folder: str, name: str, entry: dict) -> str | None:
    """None if `name` matches its recorded size and sha256, else what is wrong."""
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return f"{name}: missing"
    size = os.path.getsize(path)
    if size != entry["bytes"]:
        return f"{name}: {size} bytes, {entry['bytes']} recorded (truncated or overwritten)"
    with open(path, "rb") as fh:
        _, digest = _digest(fh)
    if digest != entry["sha256"]:
        return f"{name}: sha256 differs from the recorded one (damaged)"
    return None


def share(files: dict[str, dict], rank: int, world_size: int) -> list[str]:
    """The files rank `rank` verifies: largest first, dealt round-robin, so every file is hashed
    exactly once and the biggest ones land on different ranks."""
    order = sorted(files, key=lambda n: (-files[n]["bytes"], n))
    return order[rank::world_size]


def verify_share(folder: str, files: dict[str, dict], rank: int, world_size: int) -> list[str]:
    problems = (check(folder, name, files[name]) for name in share(files, rank, world_size))
    return [p for p in problems if p is not None]


def read_json(path: str) -> dict | None:
    """The JSON file at `path`, or None when there is none (the counterpart of write_atomic)."""
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def write_atomic(path: str, text: str) -> None:
    """Replace `path` with `text` so that a reader sees the old or the new file, never a mix; the
    new file and its directory entry are on disk when this returns."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")
