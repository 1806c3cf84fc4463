"""The sample folder: one PNG per seed (seedNNNNNN.png), optional tar shards, and samples.json.

Files appear atomically (written under a temporary name, then renamed), so a killed job leaves only
complete images and temporary files, which the next run removes. samples.json records the
settings that decide the images; a rerun with other settings is refused instead of mixing two sets.
Shard j (shard-NNNNNN.tar) holds the seeds at positions [j*S, (j+1)*S) of the seed list, packed only
once all of them exist; the packed PNGs are then removed.
"""
from __future__ import annotations

import io
import json
import os
import re
import tarfile

import numpy as np
from PIL import Image

from dvdp_hr.distributed.integrity import read_json
from dvdp_hr.metrics.errors import EvaluationError

SETTINGS = "samples.json"
FORMAT = "dvdp_hr.samples/1"
_PNG_END = b"IEND\xaeB`\x82"  # the last 8 bytes of every complete PNG
_PNG = re.compile(r"^seed(\d+)\.png$")
_SHARD = re.compile(r"^shard-(\d{6})\.tar$")
_TMP = ".tmp-"


class OutdirError(EvaluationError):
    pass


def png_name(seed: int) -> str:
    return f"seed{seed:06d}.png"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_atomic(path: str, data: bytes) -> None:
    """`path` appears complete or not at all (tmp file in the same folder, then rename)."""
    tmp = f"{path}{_TMP}{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def write_png(outdir: str, seed: int, pixels: np.ndarray) -> str:
    path = os.path.join(outdir, png_name(seed))
    write_atomic(path, png_bytes(pixels))
    return path


def _png_complete(path: str) -> bool:
    """Cheap check that a PNG was written to its end (a node crash can leave a truncated file)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(-len(_PNG_END), os.SEEK_END)
            return fh.read() == _PNG_END
    except OSError:
        return False


# ---- settings (samples.json) ----
def check_settings(outdir: str, settings: dict) -> None:
    """Write samples.json on first use; afterwards refuse settings that would change the images."""
    path = os.path.join(outdir, SETTINGS)
    old = read_json(path)
    if old is None:
        os.makedirs(outdir, exist_ok=True)
        write_atomic(path, (json.dumps({"format": FORMAT, **settings}, indent=1) + "\n").encode())
        return
    diffs = [f"{k}: {old.get(k)!r} there, {v!r} now" for k, v in settings.items() if old.get(k) != v]
    if diffs:
        raise OutdirError(f"{outdir} holds samples made with other settings ({'; '.join(diffs)}). Rerun with "
                          f"the settings of {path} to complete that set, or use a new --outdir.")


def read_settings(outdir: str) -> dict | None:
    return read_json(os.path.join(outdir, SETTINGS))


# ---- what is finished ----
def remove_temporaries(outdir: str) -> int:
    """Delete the temporary files of killed writers (call before any rank writes)."""
    names = [n for n in os.listdir(outdir) if _TMP in n]
    for name in names:
        os.remove(os.path.join(outdir, name))
    return len(names)


def shard_seeds(seeds: list[int], shard_size: int, index: int) -> list[int]:
    return seeds[index * shard_size:(index + 1) * shard_size]


def finished_seeds(outdir: str, seeds: list[int], shard_size: int = 0) -> set[int]:
    """Seeds with a complete PNG or inside a published shard."""
    done: set[int] = set()
    for name in os.listdir(outdir):
        png, shard = _PNG.match(name), _SHARD.match(name)
        if png and _png_complete(os.path.join(outdir, name)):
            done.add(int(png.group(1)))
        elif shard and shard_size:
            done.update(shard_seeds(seeds, shard_size, int(shard.group(1))))
    return done & set(seeds)


def pending_batches(plan: list[list[int]], done: set[int]) -> list[list[int]]:
    """Batches with a missing image. A batch is redrawn whole, so a resumed image is bitwise the one
    an uninterrupted run draws (batch composition can change the last bits)."""
    return [b for b in plan if not done.issuperset(b)]


# ---- shards ----
def pack_shard(outdir: str, seeds: list[int], shard_size: int, index: int) -> str:
    """Pack shard `index` from its PNGs (deterministic bytes: fixed member metadata), publish it
    atomically, then remove the PNGs (also the leftovers of a writer killed after publishing)."""
    path = os.path.join(outdir, shard_name(index))
    members = shard_seeds(seeds, shard_size, index)
    if not os.path.isfile(path):
        tmp = f"{path}{_TMP}{os.getpid()}"
        with tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for seed in members:
                info = tar.gettarinfo(os.path.join(outdir, png_name(seed)), arcname=png_name(seed))
                info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, 0, "", ""
                with open(os.path.join(outdir, png_name(seed)), "rb") as fh:
                    tar.addfile(info, fh)
        os.replace(tmp, path)
    for seed in members:
        png = os.path.join(outdir, png_name(seed))
        if os.path.exists(png):
            os.remove(png)
    return path


def num_shards(count: int, shard_size: int) -> int:
    return -(-count // shard_size) if shard_size else 0


def shard_members(path: str):
    """(name, bytes) of each member of a tar shard, in order."""
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            if info.isfile():
                yield info.name, tar.extractfile(info).read()
