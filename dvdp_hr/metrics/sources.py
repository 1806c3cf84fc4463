"""Where evaluation images come from, cut into units that ranks share.

A unit is a short list of image files (one feature batch) or one tar shard; unit u goes to rank
u % W, and each unit is cut into the same feature batches on any rank, so every image's features are
computed in the same batch for any world size. Sources:
- a `dvdp-hr sample` folder (samples.json): its PNGs and shard-NNNNNN.tar files; refused if incomplete;
- a make_shards folder (manifest.json): the set at --resolution (default: the largest);
- a folder of *.tar shards (PNG/JPEG members);
- any other folder: image files found as clean-fid lists them (recursive, sorted).
"""
from __future__ import annotations

import glob
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import EvaluationError

# clean-fid's cleanfid.utils.EXTENSIONS without npy (its folder listing, get_folder_features)
IMAGE_EXTENSIONS = ("bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp", "JPEG", "JPG", "PNG")
_MEMBER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class Unit:
    kind: str  # "files" or "tar"
    items: tuple[str, ...]  # image paths, or (shard path or URL,)
    size: int | None = None  # images in the unit, when known without reading it

    @property
    def count(self) -> int | None:
        return len(self.items) if self.kind == "files" else self.size


def decode(data: bytes) -> np.ndarray:
    """uint8 HWC RGB, as clean-fid reads files (PIL convert('RGB'))."""
    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))


def read_unit(unit: Unit) -> Iterator[np.ndarray]:
    if unit.kind == "files":
        for path in unit.items:
            with open(path, "rb") as fh:
                yield decode(fh.read())
        return
    from dvdp_hr.data.shards import read_shard

    for sample in read_shard(unit.items[0]):
        if "__error__" in sample:
            raise EvaluationError(f"cannot read {unit.items[0]}: {sample['__error__']}")
        key = next((k for k in sample if ("." + k.lower()) in _MEMBER_EXTENSIONS), None)
        if key is not None:
            yield decode(sample[key])


def first_images(units: list[Unit], count: int) -> list[tuple[int, Unit, int]]:
    """(global index of the unit's first image, unit, images to take) covering the first `count` images
    in source order; every unit before the last must know its size."""
    out, offset = [], 0
    for unit in units:
        if offset >= count:
            break
        if unit.count is None:
            raise EvaluationError(f"{unit.items[0]}: the number of images in this shard is unknown (no manifest), "
                                  "so the first N images cannot be picked; use a make_shards folder or image files")
        out.append((offset, unit, min(unit.count, count - offset)))
        offset += unit.count
    if offset < count:
        raise EvaluationError(f"the source holds {offset:,} images, fewer than the {count:,} asked for")
    return out


def file_units(paths: list[str], batch: int) -> list[Unit]:
    return [Unit("files", tuple(paths[i:i + batch])) for i in range(0, len(paths), batch)]


def list_folder_images(folder: str) -> list[str]:
    """clean-fid's listing: every image file under `folder`, recursively, sorted by path."""
    pattern = lambda ext: os.path.join(folder, f"**/*.{ext}")
    return sorted({f for ext in IMAGE_EXTENSIONS for f in glob.glob(pattern(ext), recursive=True)})


def resolve_units(path: str, batch: int, resolution: int | None = None) -> tuple[list[Unit], int | None]:
    """(units, number of images when known) of a source folder (module docstring)."""
    if not os.path.isdir(path) and "{res}" not in path:
        raise EvaluationError(f"{path} is not a folder: pass a folder of images, a `dvdp-hr sample` folder, a "
                              f"make_shards folder or a folder of .tar shards")
    if os.path.isfile(os.path.join(path, "samples.json")):
        return _sample_folder_units(path, batch)
    if os.path.isfile(os.path.join(path, "manifest.json")) or "{res}" in path:
        return _make_shards_units(path, resolution)
    tars = sorted(glob.glob(os.path.join(path, "*.tar")))
    if tars:
        return [Unit("tar", (t,)) for t in tars], None
    files = list_folder_images(path)
    if not files:
        raise EvaluationError(f"{path} holds no images ({', '.join(IMAGE_EXTENSIONS[:5])}, ...) and no .tar shards")
    return file_units(files, batch), len(files)


def _sample_folder_units(path: str, batch: int) -> tuple[list[Unit], int]:
    from dvdp_hr.sampling import outdir as od
    from dvdp_hr.sampling.seeds import parse_seeds

    settings = od.read_settings(path)
    seeds = parse_seeds(settings["seeds"])
    shard_size = settings.get("shard_size", 0)
    done = od.finished_seeds(path, seeds, shard_size)
    if len(done) != len(seeds):
        raise EvaluationError(f"{path} holds {len(done):,} of its {len(seeds):,} samples: finish it first "
                              f"(rerun the same `dvdp-hr sample` command), then evaluate")
    shards = [i for i in range(od.num_shards(len(seeds), shard_size))
              if os.path.isfile(os.path.join(path, od.shard_name(i)))]
    packed = {s for i in shards for s in od.shard_seeds(seeds, shard_size, i)}
    pngs = [os.path.join(path, od.png_name(s)) for s in seeds if s not in packed]
    units = [Unit("tar", (os.path.join(path, od.shard_name(i)),), len(od.shard_seeds(seeds, shard_size, i)))
             for i in shards]
    return units + file_units(pngs, batch), len(seeds)


def _make_shards_units(path: str, resolution: int | None) -> tuple[list[Unit], int | None]:
    from dvdp_hr.data.shards import load_manifest, shard_set_size, stage_urls, url_list

    if resolution is None:
        if "{res}" in path:
            raise EvaluationError(f"{path} is a URL pattern: pass --resolution")
        resolution = max(int(r) for r in load_manifest(path)["resolutions"])
    try:
        urls = url_list(stage_urls(path, resolution))
        _, count, _ = shard_set_size(path, resolution)
    except ValueError as err:
        raise EvaluationError(str(err)) from None
    sizes = [None] * len(urls)
    if "{res}" not in path:
        sizes = [e["samples"] for e in load_manifest(path)["sets"][str(resolution)]["shards"]]
    return [Unit("tar", (u,), n) for u, n in zip(urls, sizes)], count
