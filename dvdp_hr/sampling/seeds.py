"""Seed lists and the batch plan: which seeds form a batch, and which rank draws it.

The plan depends on the seed list and the batch size only: batch b = seeds[b*B:(b+1)*B], and rank r
of W draws batches r, r+W, ... of the list it is given. Every image is drawn inside the same batch
for any number of ranks, so the set of images is bitwise identical for any W.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from dvdp_hr.metrics.errors import EvaluationError

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


class SeedError(EvaluationError):
    pass


def parse_seeds(text: str) -> list[int]:
    """'0-49999' -> [0..49999]; '0-9,20,30-39' -> ranges and single seeds, inclusive, in order."""
    seeds: list[int] = []
    for part in str(text).split(","):
        match = _RANGE.match(part)
        if not match:
            raise SeedError(f"--seeds {text!r}: {part!r} is not a seed or an inclusive range like 0-49999")
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        if hi < lo:
            raise SeedError(f"--seeds {text!r}: range {part.strip()!r} runs backwards")
        seeds.extend(range(lo, hi + 1))
    if len(set(seeds)) != len(seeds):
        raise SeedError(f"--seeds {text!r} names some seed twice; each seed is one image")
    return seeds


def batch_plan(seeds: Sequence[int], batch: int) -> list[list[int]]:
    """The seeds cut into batches by position: batch b = seeds[b*batch:(b+1)*batch]."""
    if batch < 1:
        raise SeedError(f"batch must be >= 1, got {batch}")
    seeds = [int(s) for s in seeds]
    return [seeds[i:i + batch] for i in range(0, len(seeds), batch)]


def deal(items: Sequence, rank: int, world: int) -> list:
    """Round-robin share of rank `rank` of `world`: items rank, rank + world, ..."""
    if not 0 <= rank < world:
        raise SeedError(f"rank {rank} is outside a world of {world}")
    return list(items[rank::world])
