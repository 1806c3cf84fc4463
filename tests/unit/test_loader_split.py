"""Rank/worker split: per epoch, the reading slots get disjoint parts that cover every sample,
with enough shards (shard-level split) and with fewer shards than slots (sample-level split)."""

import pytest
import torch
from data_fixtures import as_uint8, make_shard_set, stored_images

from dvdp_hr.data import StageStream, stage_urls
from dvdp_hr.data.shards import epoch_items


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shard_set(
        tmp_path_factory.mktemp("split"), count=18, size=8, resolutions="8,4", shard_size=2
    )


@pytest.mark.parametrize(
    "shard_count, ranks, workers", [(9, 2, 1), (9, 2, 2), (3, 2, 2), (1, 2, 1)]
)
def test_each_epoch_is_split_disjointly_and_completely(shards, shard_count, ranks, workers):
    urls = stage_urls(str(shards), 4)[:shard_count]
    everything = sorted(item["__key__"] for url in urls for item in epoch_items([url], 0, 0, 0, 1))
    for epoch in (0, 1):
        parts = [
            [item["__key__"] for item in epoch_items(urls, 5, epoch, slot, ranks * workers)]
            for slot in range(ranks * workers)
        ]
        assert sorted(sum(parts, [])) == everything
        assert all(parts)


def test_two_rank_streams_cover_the_data_set_once_per_epoch(shards):
    urls = stage_urls(str(shards), 8)
    stored = stored_images(shards, 8)
    seen = []
    for rank in (0, 1):
        count = sum(1 for _ in epoch_items(urls, 7, 0, rank, 2))
        stream = iter(
            StageStream(
                urls, 8, batch_size=1, seed=7, rank=rank, world_size=2, flip=False, shuffle_buffer=4
            )
        )
        seen += [stored[p.tobytes()] for _ in range(count) for p in as_uint8(next(stream))]
    assert sorted(seen) == sorted(stored.values())


def test_ranks_get_different_batches(shards):
    urls = stage_urls(str(shards), 8)
    a, b = (
        next(iter(StageStream(urls, 8, batch_size=4, seed=7, rank=r, world_size=2))) for r in (0, 1)
    )
    assert not torch.equal(a, b)
