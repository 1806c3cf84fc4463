"""Shard URLs, manifests, and the per-(epoch, rank, worker) sample order (webdataset readers).

Split rule, per epoch e: the shard list is permuted by a generator seeded with (seed, e), the
same on every rank. With S shards and N = world_size * workers reading slots, slot
i = rank * workers + worker reads the shards perm[i::N] (shard-level split). When S < N, every
slot reads all shards in perm order and keeps the samples whose running index j satisfies
j % N == i (sample-level split: the same coverage, N times the reading). Either way each epoch
is split into disjoint parts that together cover every sample exactly once.
"""

import hashlib
import json
import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path

from webdataset.shardlists import expand_urls
from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def _manifest_path(shards: str) -> Path | None:
    path = Path(shards).expanduser()
    return path / MANIFEST if path.is_dir() else None


def load_manifest(shards: str) -> dict:
    """DIR/manifest.json of a make_shards output folder (ValueError naming the fix when missing)."""
    manifest_path = _manifest_path(shards)
    if not manifest_path.exists():
        raise ValueError(
            f"{manifest_path} not found: run `dvdp-hr make-shards --out {shards}` first"
        )
    return json.loads(manifest_path.read_text())


def _set_entries(shards: str, manifest: dict, resolution: int) -> list[dict]:
    if str(resolution) not in manifest["sets"]:
        raise ValueError(
            f"{shards} has no {resolution}x{resolution} set (has {manifest['resolutions']}); "
            f"remake the shards with {resolution} in --resolutions"
        )
    return manifest["sets"][str(resolution)]["shards"]


def stage_urls(shards: str, resolution: int) -> str | list[str]:
    """Shard URLs of one resolution: from a make_shards output folder (its manifest) or from a
    URL/brace pattern containing "{res}" (e.g. "pipe:curl -s https://host/{res}/shard-{000000..000069}.tar")."""
    manifest_path = _manifest_path(shards)
    if manifest_path is None:
        if "{res}" not in shards:
            raise ValueError(
                f"shards={shards!r} is neither a make_shards folder nor a pattern containing "
                "'{res}' (e.g. 'data/{res}/shard-{000000..000069}.tar')"
            )
        return shards.replace("{res}", str(resolution))
    entries = _set_entries(shards, load_manifest(shards), resolution)
    folder = manifest_path.parent / str(resolution)
    return [str(folder / entry["name"]) for entry in entries]


def damaged_shards(shards: str, resolution: int) -> list[str]:
    """Cheap integrity check of one set of a make_shards folder: each shard the manifest lists
    must exist with its recorded byte size (no hashing; inspect_shards.py does the full check).
    Returns one line per damaged shard; [] for a URL pattern (nothing local to check)."""
    manifest_path = _manifest_path(shards)
    if manifest_path is None:
        return []
    folder = manifest_path.parent / str(resolution)
    problems = []
    for entry in _set_entries(shards, load_manifest(shards), resolution):
        path = folder / entry["name"]
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != entry["bytes"]:
            problems.append(f"{path}: {path.stat().st_size} bytes, the manifest says {entry['bytes']}")
    return problems


def manifest_digest(shards: str) -> str | None:
    """sha256 of DIR/manifest.json; None for a URL pattern (nothing local to hash)."""
    manifest_path = _manifest_path(shards)
    if manifest_path is None or not manifest_path.exists():
        return None
    return hashlib.sha256(manifest_path.read_bytes()).hexdigest()


def url_list(urls: str | list[str]) -> list[str]:
    """Expand a brace pattern ("a/shard-{000000..000009}.tar", "::" separated) or copy a list."""
    expanded = expand_urls(urls) if isinstance(urls, str) else [str(u) for u in urls]
    if not expanded:
        raise ValueError(f"no shard URLs in {urls!r}")
    return expanded


OPEN_RETRIES = 3  # a shard that cannot be opened is retried (transient storage or network errors)
OPEN_BACKOFF_S = 2.0  # seconds before the first retry, doubled each time


class ShardOpenError(RuntimeError):
    """A shard could not be opened after retries: skipping it would silently change the data order."""


def read_shard(url: str) -> Iterator[dict]:
    """Samples of one tar shard, in order. A read error inside the shard becomes an
    {"__error__": ...} item where it happened, so that errors keep their place in the sample order.
    A shard that cannot be opened is retried OPEN_RETRIES times, then raises ShardOpenError."""
    for attempt in range(OPEN_RETRIES + 1):
        items = _read_shard_once(url)
        first = next(items, None)
        if first is None or not first.get("__open_failed__"):
            if first is not None:
                yield first
                yield from items
            return
        if attempt < OPEN_RETRIES:
            log.warning("cannot open shard %s (%s); retry %d of %d", url, first["__error__"], attempt + 1,
                        OPEN_RETRIES)
            time.sleep(OPEN_BACKOFF_S * 2**attempt)
    raise ShardOpenError(
        f"cannot open shard {url} after {OPEN_RETRIES + 1} attempts: {first['__error__']}. Check the storage "
        "and the shard list (data_tools/inspect_shards.py for a local set); rerun the same command to resume.")


def _read_shard_once(url: str) -> Iterator[dict]:
    errors: list[dict] = []

    def recorder(opening: bool):
        def record(exn: Exception) -> bool:
            errors.append({"__error__": f"{type(exn).__name__}: {exn}", "__url__": url,
                           **({"__open_failed__": True} if opening else {})})
            return True  # continue

        return record

    streams = url_opener([{"url": url}], handler=recorder(opening=True))
    record = recorder(opening=False)
    for sample in group_by_keys(tar_file_expander(streams, handler=record), handler=record):
        yield from errors
        errors.clear()
        yield sample
    yield from errors


def epoch_permutation(count: int, seed: int, epoch: int) -> list[int]:
    order = list(range(count))
    random.Random(f"dvdp_hr.shards/{seed}/{epoch}").shuffle(
        order
    )  # str seeds hash with sha512: stable
    return order


def epoch_items(urls: list[str], seed: int, epoch: int, slot: int, slots: int) -> Iterator[dict]:
    """The raw (undecoded) samples that reading slot `slot` of `slots` gets in `epoch`."""
    order = epoch_permutation(len(urls), seed, epoch)
    if len(urls) >= slots:
        for shard in order[slot::slots]:
            yield from read_shard(urls[shard])
        return
    running = 0
    for shard in order:
        for item in read_shard(urls[shard]):
            if running % slots == slot:
                yield item
            running += 1
