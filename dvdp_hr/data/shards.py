"""Shard URLs, manifests, and the per-(epoch, rank, worker) sample order (webdataset readers).

Split rule, per epoch e: the shard list is permuted by a generator seeded with (seed, e), the
same on every rank. With S shards and N = world_size * workers reading slots, slot
i = rank * workers + worker reads the shards perm[i::N] and nothing else (shard-level split), so
each epoch is split into disjoint parts that together cover every sample exactly once and every
byte is read once (read amplification 1.0). A set with fewer shards than slots is refused
(TooFewShardsError): the sample-level fallback it used to get (every slot reads every shard and
keeps 1/N of the samples) read N times the data and parsed a whole set before a slot's first output.
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


class TooFewShardsError(ValueError):
    """Fewer shards than reading slots: some slot would have no shard of its own."""


def check_enough_shards(num_shards: int, slots: int, what: str = "the shard set") -> None:
    """Refuse a set that cannot give every reading slot (rank x worker) a shard of its own."""
    if num_shards < slots:
        raise TooFewShardsError(
            f"{what} has {num_shards} shard(s) but {slots} reading slots (ranks x max(1, num_workers)) "
            f"read it, and each slot reads only whole shards of its own: remake the shards with "
            f"`make_shards --num-shards N` for some N >= {slots}, or use fewer workers or ranks"
        )


def slot_shards(num_shards: int, seed: int, epoch: int, slot: int, slots: int) -> list[int]:
    """Indices of the shards that reading slot `slot` of `slots` reads in `epoch`, in order."""
    check_enough_shards(num_shards, slots)
    return epoch_permutation(num_shards, seed, epoch)[slot::slots]


def epoch_items(urls: list[str], seed: int, epoch: int, slot: int, slots: int) -> Iterator[dict]:
    """The raw (undecoded) samples that reading slot `slot` of `slots` gets in `epoch`."""
    for shard in slot_shards(len(urls), seed, epoch, slot, slots):
        yield from read_shard(urls[shard])


def read_amplification(num_shards: int, slots: int, shard_sizes: list[int] | None = None,
                       *, sample_level_fallback: bool = False) -> float:
    """Bytes read / bytes delivered by all `slots` reading slots over one epoch of a set of
    `num_shards` shards (`shard_sizes` in bytes; equal sizes when None).

    The shard-level split reads every shard exactly once: 1.0 whenever num_shards >= slots, and
    fewer shards than slots is refused (TooFewShardsError), so that case cannot occur in a run.
    `sample_level_fallback=True` gives what the rule before the refusal read instead: with
    num_shards < slots every slot read every shard and kept 1/slots of the samples (= slots)."""
    sizes = _shard_sizes(num_shards, shard_sizes)
    if slots < 1:
        raise ValueError(f"slots={slots}: must be at least 1")
    if sample_level_fallback and num_shards < slots:
        return float(slots)  # every slot read every byte of the set
    check_enough_shards(num_shards, slots)
    order = epoch_permutation(num_shards, 0, 0)  # any epoch: the totals do not depend on it
    read = sum(sizes[shard] for slot in range(slots) for shard in order[slot::slots])
    return read / sum(sizes)


def _shard_sizes(num_shards: int, shard_sizes: list[int] | None) -> list[int]:
    if num_shards < 1:
        raise ValueError(f"num_shards={num_shards}: must be at least 1")
    sizes = [1] * num_shards if shard_sizes is None else list(shard_sizes)
    if len(sizes) != num_shards or any(size <= 0 for size in sizes):
        raise ValueError(f"shard_sizes must hold {num_shards} positive byte counts, got {len(sizes)} entries")
    return sizes


def shard_set_size(shards: str, resolution: int) -> tuple[int, int | None, int | None]:
    """(shards, samples, images found) of one resolution set: from a make_shards folder's manifest,
    or (shards, None, None) from the brace pattern of a URL pattern (nothing to count there)."""
    if _manifest_path(shards) is None:
        return len(url_list(stage_urls(shards, resolution))), None, None
    manifest = load_manifest(shards)
    entries = _set_entries(shards, manifest, resolution)
    return len(entries), sum(e["samples"] for e in entries), manifest.get("num_found")
