"""Deterministic, atomic tar shards: DIR/{res}/shard-NNNNNN.tar, one per resolution per group.

Members carry fixed metadata (mtime 0, uid/gid 0, mode 0644) so that the bytes depend only on
the samples. Each file is written as NAME.tmp, then renamed. No fsync (it cost seconds per shard
here): a file damaged by a crash fails the size/sha256 check that --resume makes anyway."""

import hashlib
import io
import os
import tarfile
from pathlib import Path


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


class ShardGroupWriter:
    """Writes shard `index` of every resolution set at once (the same samples in each)."""

    def __init__(self, out: Path, resolutions: tuple[int, ...], index: int):
        self.index, self.keys = index, []
        self.paths = {r: out / str(r) / shard_name(index) for r in resolutions}
        self.tars = {}
        for resolution, path in self.paths.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            self.tars[resolution] = tarfile.open(self._tmp(path), "w", format=tarfile.USTAR_FORMAT)

    @staticmethod
    def _tmp(path: Path) -> Path:
        return path.with_name(path.name + ".tmp")

    def add(self, key: str, pngs: dict[int, bytes], metadata: dict[int, bytes]) -> None:
        self.keys.append(key)
        for resolution, tar in self.tars.items():
            _add_member(tar, f"{key}.json", metadata[resolution])
            _add_member(tar, f"{key}.png", pngs[resolution])

    def close(self) -> dict[int, dict]:
        """Finish and rename every file; returns the manifest entry per resolution."""
        entries = {}
        for resolution, tar in self.tars.items():
            tar.close()
            path, tmp = self.paths[resolution], self._tmp(self.paths[resolution])
            os.replace(tmp, path)
            entries[resolution] = {
                "name": path.name,
                "samples": len(self.keys),
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
                "first_key": self.keys[0],
                "last_key": self.keys[-1],
            }
        return entries


def shard_is_intact(path: Path, entry: dict) -> bool:
    """True when the file exists with the size and sha256 the manifest entry records."""
    return (
        path.is_file()
        and path.stat().st_size == entry["bytes"]
        and sha256_file(path) == entry["sha256"]
    )
