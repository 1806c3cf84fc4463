"""Rank/worker split: per epoch, every reading slot reads whole shards of its own; the slots'
parts are disjoint and cover every sample; a set with fewer shards than slots is refused."""

import pytest
import torch
from data_fixtures import as_uint8, make_shard_set, stored_images

from dvdp_hr.data import StageStream, stage_urls
from dvdp_hr.data.shards import TooFewShardsError, epoch_items, read_amplification, slot_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """24 one-sample shards: enough for up to 24 reading slots."""
    return make_shard_set(
        tmp_path_factory.mktemp("split"), count=24, size=8, resolutions="8,4", shard_size=1
    )


@pytest.mark.parametrize(
    "shard_count, ranks, workers", [(9, 2, 1), (9, 2, 2), (24, 4, 6), (24, 2, 6), (13, 3, 4)]
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


def test_each_slot_reads_only_its_own_shards(shards, monkeypatch):
    import dvdp_hr.data.shards as shards_module

    urls, opened = stage_urls(str(shards), 4), []
    reader = shards_module.read_shard
    monkeypatch.setattr(shards_module, "read_shard", lambda url: opened.append(url) or reader(url))
    for slot in range(8):
        list(epoch_items(urls, 5, 0, slot, 8))
    assert sorted(opened) == sorted(urls)  # every shard opened once, by one slot


@pytest.mark.parametrize("num_shards, slots", [(384, 384), (761, 384), (768, 384), (1000, 999)])
def test_many_slots_get_disjoint_whole_shard_parts(num_shards, slots):
    for epoch in (0, 1, 7):
        parts = [slot_shards(num_shards, 3, epoch, slot, slots) for slot in range(slots)]
        assert sorted(sum(parts, [])) == list(range(num_shards))
        assert {len(p) for p in parts} <= {num_shards // slots, -(-num_shards // slots)}
    assignment = [[slot_shards(num_shards, 3, epoch, slot, slots) for slot in range(slots)] for epoch in (0, 1)]
    assert assignment[0] == [slot_shards(num_shards, 3, 0, slot, slots) for slot in range(slots)]  # pure
    assert assignment[0] != assignment[1]  # reshuffled every epoch


@pytest.mark.parametrize("shard_count, ranks, workers", [(3, 2, 2), (1, 2, 1), (70, 64, 6)])
def test_fewer_shards_than_slots_is_refused(shards, shard_count, ranks, workers):
    urls = stage_urls(str(shards), 4)[:shard_count] if shard_count <= 24 else [f"s{i}.tar" for i in range(70)]
    slots = ranks * workers
    with pytest.raises(TooFewShardsError, match=rf"{shard_count} shard\(s\) but {slots} reading slots.*--num-shards"):
        next(epoch_items(urls, 0, 0, 0, slots))
    with pytest.raises(ValueError, match=rf"4x4 shard set .*{shard_count} shard\(s\) but {slots} reading slots"):
        StageStream(urls, 4, batch_size=1, seed=0, rank=0, world_size=ranks, num_workers=workers)


def test_num_workers_zero_counts_as_one_slot_per_rank(shards):
    urls = stage_urls(str(shards), 4)[:2]
    StageStream(urls, 4, batch_size=1, seed=0, rank=1, world_size=2, num_workers=0)
    with pytest.raises(TooFewShardsError):
        StageStream(urls, 4, batch_size=1, seed=0, rank=1, world_size=2, num_workers=2)


def test_read_amplification():
    assert read_amplification(768, 384) == 1.0
    assert read_amplification(384, 384) == 1.0
    assert read_amplification(761, 384, [1_300_000 + 7 * i for i in range(761)]) == 1.0
    with pytest.raises(TooFewShardsError):
        read_amplification(70, 384)  # refused: the shard-level split cannot feed 384 slots
    # the rule before the refusal: every slot read every shard and kept 1/slots of the samples
    assert read_amplification(70, 384, sample_level_fallback=True) == 384.0
    assert read_amplification(70, 64, sample_level_fallback=True) == 1.0  # enough shards: shard level
    assert read_amplification(3, 4, [10, 20, 30], sample_level_fallback=True) == 4.0
    for bad in ({"num_shards": 0, "slots": 1}, {"num_shards": 2, "slots": 0},
                {"num_shards": 2, "slots": 1, "shard_sizes": [1]}, {"num_shards": 1, "slots": 1, "shard_sizes": [0]}):
        with pytest.raises(ValueError):
            read_amplification(**bad)


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
