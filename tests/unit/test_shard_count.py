"""Shard count vs reading slots (ranks x per-stage workers): refusal with the fix, the shuffle
buffer warning, per-stage data.num_workers validation and use, and the sizing arithmetic."""
import logging
import re

import pytest
from data_fixtures import make_shard_set

from dvdp_hr.data.sizing import num_shards_option_for, shard_size_for, shard_size_option_for, shards_made
from dvdp_hr.train.config import ConfigError, load_config
from dvdp_hr.train.setup import make_streams
from dvdp_hr.train.validate import build_schedule, check_shard_count, reading_slots, workers_for_stage

TINY = "configs/tiny_cpu.yaml"  # 3 stages: 64, 32, 16 px
FFHQ = "configs/ffhq1024.yaml"  # 5 stages: 1024 ... 64 px


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch, request):
    monkeypatch.chdir(request.config.rootpath)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """40 images at 64/32/16 px in 10 shards of 4."""
    return make_shard_set(tmp_path_factory.mktemp("count"), count=40, size=64, resolutions="64,32,16",
                          shard_size=4)


def tiny(shards, *overrides):
    return load_config(TINY, [f"data.shards={shards}", "data.shuffle_buffer=2", *overrides])


def test_enough_shards_pass_and_num_workers_zero_is_one_slot_per_rank(shards):
    cfg = tiny(shards, "data.num_workers=0")
    assert check_shard_count(cfg, build_schedule(cfg), world_size=10) == []
    cfg = tiny(shards, "data.num_workers=5")
    assert check_shard_count(cfg, build_schedule(cfg), world_size=2) == []


def test_too_few_shards_are_refused_naming_stage_resolution_counts_and_fixes(shards):
    cfg = tiny(shards, "data.num_workers=[2, 6, 1]")
    with pytest.raises(ConfigError) as refusal:
        check_shard_count(cfg, build_schedule(cfg), world_size=3)
    message = str(refusal.value)
    assert "stage 1 (32x32): 10 shards < 18 slots (3 ranks x 6 workers)" in message
    assert "stage 0" not in message and "stage 2" not in message  # 6 and 3 slots: enough
    # 40 images: --num-shards 20 -> size 2 -> 20 shards; --shard-size 2 -> 20 shards (3 would give 14)
    assert "--num-shards 20` (or `--shard-size 2`) for these 40 images" in message
    assert "data.num_workers=[2,3,1]" in message  # pastes as an override


def test_fewer_shards_than_ranks_says_no_worker_count_helps(shards):
    cfg = tiny(shards)
    with pytest.raises(ConfigError, match="run on at most 10 ranks"):
        check_shard_count(cfg, build_schedule(cfg), world_size=16)


def test_the_real_run_with_70_shards_is_refused_and_768_pass():  # configs/ffhq1024.yaml: 2 workers per stage
    cfg = load_config(FFHQ, ["data.shards=pipe:curl -s https://host/{res}/shard-{000000..000069}.tar"])
    schedule = build_schedule(cfg)
    with pytest.raises(ConfigError) as refusal:
        check_shard_count(cfg, schedule, world_size=64)
    for res in (1024, 512, 256, 128, 64):
        assert f"({res}x{res}): 70 shards < 128 slots (64 ranks x 2 workers)" in str(refusal.value)
    assert "--num-shards N" in str(refusal.value)
    cfg.data.shards = "data/{res}/shard-{000000..000760}.tar"  # what --num-shards 768 gives for 70,000
    assert check_shard_count(cfg, schedule, world_size=64) == []


def test_shuffle_buffer_above_a_slots_share_warns_once(shards, caplog):
    cfg = tiny(shards, "data.num_workers=2", "data.shuffle_buffer=500")
    schedule = build_schedule(cfg)
    with caplog.at_level(logging.WARNING):
        notes = check_shard_count(cfg, schedule, world_size=2)
        assert check_shard_count(cfg, schedule, world_size=2) == notes
    assert len(notes) == 1 and "data.shuffle_buffer=500 exceeds a reading slot's share" in notes[0]
    assert "stage 0 (64x64): ~10 = 40 samples / 4 slots" in notes[0] and "<= 10" in notes[0]
    assert [r.getMessage() for r in caplog.records] == notes  # once, though checked twice
    caplog.clear()
    check_shard_count(cfg, schedule, world_size=2, warn=False)
    assert not caplog.records


@pytest.mark.parametrize("value, message", [
    ("[1, 2]", "data.num_workers needs one entry per stage (3 stages for 64 -> 16, finest first)"),
    ("[1, -2, 0]", "data.num_workers entries must be integers >= 0"),
    ("[1, 2.5, 0]", "data.num_workers entries must be integers >= 0"),
    ("[1, true, 0]", "data.num_workers entries must be integers >= 0"),
    ("-1", "data.num_workers must be >= 0"),
])
def test_per_stage_num_workers_is_validated(value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(TINY, [f"data.num_workers={value}"])


def test_per_stage_num_workers_reach_the_streams(shards):
    cfg = tiny(shards, "data.num_workers=[2, 0, 1]")
    assert [workers_for_stage(cfg, k) for k in range(3)] == [2, 0, 1]
    assert [reading_slots(cfg, k, 4) for k in range(3)] == [8, 4, 4]
    streams = make_streams(cfg, build_schedule(cfg), rank=0, world_size=1)
    assert [streams[k].num_workers for k in range(3)] == [2, 0, 1]
    assert [streams[k].config.workers for k in range(3)] == [2, 1, 1]
    assert workers_for_stage(tiny(shards, "data.num_workers=3"), 2) == 3


def test_sizing_arithmetic():
    assert shard_size_for(70_000, 768) == 92 and shards_made(70_000, 92) == 761
    assert shard_size_for(70_000, 384) == 183 and shards_made(70_000, 183) == 383  # rounding loses one
    assert num_shards_option_for(70_000, 70_000, 384) == 385
    assert shards_made(70_000, shard_size_for(70_000, 385)) >= 384
    assert shard_size_option_for(70_000, 384) == 182 and shards_made(70_000, 182) == 385
    assert shards_made(70_000, 183) < 384
    assert num_shards_option_for(100, 90, 95) is None and shard_size_option_for(90, 95) is None
    # rejected images: the size comes from the images found, the count from those written
    found, written = 1000, 950
    n = num_shards_option_for(found, written, 100)
    assert shards_made(written, shard_size_for(found, n)) >= 100
    assert shards_made(written, shard_size_for(found, n - 1)) < 100
    assert shard_size_option_for(7, 1) == 7 and shard_size_for(0, 5) == 1
    with pytest.raises(ValueError, match="--num-shards 0"):
        shard_size_for(10, 0)
