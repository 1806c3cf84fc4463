"""The sample order of one reading slot: a pure function of (seed, epoch, rank, worker).

Each epoch of a slot is its share of the shards (shards.epoch_items) passed through a shuffle
buffer that is drained at the end of the epoch, with a generator seeded by (seed, epoch, slot).
A position is therefore (epoch, number of buffer outputs already taken in that epoch): resuming
starts reading at that epoch and skips that many outputs without decoding them, so a resume
costs at most one epoch's share of reading, whatever the run's length."""

import random
from collections.abc import Iterator

from .shards import epoch_items


def _pop_random(buffer: list, rng: random.Random):
    index = int(rng.random() * len(buffer))
    buffer[index], buffer[-1] = buffer[-1], buffer[index]
    return buffer.pop()


def shuffled(items, buffer_size: int, rng: random.Random) -> Iterator[tuple[dict, bool]]:
    """(item, flip bit) pairs; every output draws exactly two numbers from rng."""
    buffer: list = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= buffer_size:
            yield _pop_random(buffer, rng), rng.random() < 0.5
    while buffer:
        yield _pop_random(buffer, rng), rng.random() < 0.5


def slot_stream(
    urls: list[str], seed: int, buffer_size: int, slot: int, slots: int, start: tuple[int, int]
) -> Iterator[tuple[int, int, dict, bool]]:
    """Infinite (epoch, outputs taken in epoch, item, flip) from position `start` on."""
    epoch, skip = start
    while True:
        rng = random.Random(f"dvdp_hr.order/{seed}/{epoch}/{slot}/{slots}")
        taken = 0
        for taken, (item, flip) in enumerate(
            shuffled(epoch_items(urls, seed, epoch, slot, slots), buffer_size, rng), start=1
        ):
            if taken > skip:
                yield epoch, taken, item, flip
        if taken == 0:
            raise RuntimeError(
                f"reading slot {slot} of {slots} got no samples in epoch {epoch} from "
                f"{len(urls)} shard(s) (first: {urls[0]}); check the shards with inspect_shards"
            )
        epoch, skip = epoch + 1, 0
