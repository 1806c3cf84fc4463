"""Shard-count arithmetic shared by make_shards and the trainer's shard-count check.

Torch-free on purpose: make_shards imports it in the parent of its fork pool (dvdp_hr.data.shards
imports webdataset, hence torch).

make_shards fills shards in source order with `shard_size` written samples each, so a set of
`written` samples has ceil(written / shard_size) shards; `--num-shards N` derives the shard size
from the images FOUND (written is known only at the end): ceil(found / N). Rounding up and
rejected images can therefore give a few shards fewer than N (70,000 images, N = 384: size 183,
383 shards); `num_shards_option_for` picks an N that surely gives enough.
"""

from math import ceil


def shard_size_for(num_found: int, num_shards: int) -> int:
    """Samples per shard that `--num-shards num_shards` gives for `num_found` source images."""
    if num_shards < 1:
        raise ValueError(f"--num-shards {num_shards}: must be at least 1")
    return max(1, ceil(num_found / num_shards))


def shards_made(num_written: int, shard_size: int) -> int:
    """Shards per resolution set for `num_written` samples at `shard_size` samples per shard."""
    return ceil(num_written / shard_size)


def num_shards_option_for(num_found: int, num_written: int, slots: int) -> int | None:
    """The smallest `--num-shards` that gives at least `slots` shards for these images; None when
    there are fewer written images than slots (no shard split can feed every slot)."""
    if num_written < slots:
        return None
    target = slots
    while shards_made(num_written, shard_size_for(num_found, target)) < slots:
        target += 1
    return target


def shard_size_option_for(num_written: int, slots: int) -> int | None:
    """The largest `--shard-size` that gives at least `slots` shards; None when impossible.
    ceil(W / s) >= N  <=>  s < W / (N - 1)."""
    if num_written < slots:
        return None
    return num_written if slots == 1 else (num_written - 1) // (slots - 1)
