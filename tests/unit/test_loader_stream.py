"""StageStream: URLs from a manifest or a {res} pattern, decoded values, epochs, flips,
determinism, and the corrupt-sample handler."""

import hashlib
import json

import numpy as np
import pytest
import torch
from data_fixtures import (
    as_uint8,
    encode,
    make_shard_set,
    random_image,
    stored_images,
    write_tar,
)

from dvdp_hr.data import StageStream, manifest_digest, stage_urls


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shard_set(
        tmp_path_factory.mktemp("loader"), count=20, size=16, resolutions="16,8", shard_size=4
    )


def test_stage_urls_and_manifest_digest(shards):
    urls = stage_urls(str(shards), 8)
    assert urls == [str(shards / "8" / f"shard-{i:06d}.tar") for i in range(5)]
    assert (
        manifest_digest(str(shards))
        == hashlib.sha256((shards / "manifest.json").read_bytes()).hexdigest()
    )
    pattern = "pipe:curl -s https://host/ffhq/{res}/shard-{000000..000069}.tar"
    assert stage_urls(pattern, 64) == "pipe:curl -s https://host/ffhq/64/shard-{000000..000069}.tar"
    assert manifest_digest(pattern) is None
    with pytest.raises(ValueError, match="no 32x32 set"):
        stage_urls(str(shards), 32)
    with pytest.raises(ValueError, match="'{res}'"):
        stage_urls("data/shard-{000..009}.tar", 8)
    with pytest.raises(ValueError, match="make-shards"):
        stage_urls(str(shards / "8"), 8)


def test_one_epoch_gives_every_stored_image_once_as_floats(shards):
    stored = stored_images(shards, 8)
    pattern = str(shards / "8" / "shard-{000000..000004}.tar")
    stream = iter(StageStream(pattern, 8, batch_size=4, seed=3, shuffle_buffer=7, flip=False))
    batches = [next(stream) for _ in range(5)]
    for batch in batches:
        assert (
            batch.shape == (4, 3, 8, 8) and batch.dtype == torch.float32 and batch.is_contiguous()
        )
        assert batch.min() >= -1 and batch.max() <= 1
    keys = [stored[p.tobytes()] for b in batches for p in as_uint8(b)]
    assert sorted(keys) == sorted(stored.values())
    assert keys != sorted(keys)  # shuffled
    first = torch.from_numpy(as_uint8(batches[0])[0]).permute(2, 0, 1).double() / 127.5 - 1
    assert torch.equal(first.float(), batches[0][0])


def test_flips_are_random_horizontal_mirrors(shards):
    stored = stored_images(shards, 8)
    stream = iter(StageStream(stage_urls(str(shards), 8), 8, batch_size=20, seed=0, flip=True))
    flipped = []
    for pixels in as_uint8(next(stream)):
        flipped.append(pixels.tobytes() not in stored)
        assert (
            pixels.tobytes() in stored or np.ascontiguousarray(pixels[:, ::-1]).tobytes() in stored
        )
    assert 0 < sum(flipped) < 20


def test_same_seed_same_stream_other_seed_other_stream(shards):
    def take(seed, n=6):
        stream = iter(
            StageStream(stage_urls(str(shards), 16), 16, batch_size=3, seed=seed, shuffle_buffer=5)
        )
        return torch.cat([next(stream) for _ in range(n)])

    assert torch.equal(take(1), take(1))
    assert not torch.equal(take(1), take(2))


@pytest.fixture()
def damaged(tmp_path):
    good = [(f"{i:04d}.png", encode(random_image(i, 8, 8), "PNG")) for i in range(8)]
    write_tar(tmp_path / "a.tar", good[:4])
    write_tar(
        tmp_path / "b.tar",
        good[4:6]
        + [("0100.png", b"not a png"), ("0101.png", encode(random_image(1, 4, 4), "PNG"))],
    )
    whole = write_tar(tmp_path / "c.tar", good[6:]).read_bytes()
    (tmp_path / "c.tar").write_bytes(whole[: 1024 + 100])  # truncated inside the second member
    return [str(tmp_path / n) for n in ("a.tar", "b.tar", "c.tar")]


def test_corrupt_samples_are_counted_and_skipped(damaged):
    # per epoch: 7 good samples; garbage png, wrong size, truncated tar = 3 counted errors
    stream = StageStream(damaged, 8, batch_size=1, seed=0, shuffle_buffer=1)
    iterator = iter(stream)
    for _ in range(7 * 3):
        assert next(iterator).shape == (1, 3, 8, 8)
    assert 6 <= stream.corrupt_count <= 9
    assert json.loads(json.dumps(stream.state_dict()))["corrupt"] == [stream.corrupt_count]


def test_a_stream_of_only_errors_stops_with_a_clear_message(tmp_path):
    junk = write_tar(tmp_path / "junk.tar", [(f"{i:05d}.png", b"x") for i in range(1100)])
    with pytest.raises(RuntimeError, match="inspect_shards"):
        next(iter(StageStream([str(junk)], 8, batch_size=1, seed=0)))


def test_a_shard_that_cannot_be_opened_is_retried_then_stops_the_stream(damaged, caplog, monkeypatch):
    """Skipping an unopenable shard would silently change the data order (and break exact resume)."""
    import dvdp_hr.data.shards as shards

    monkeypatch.setattr(shards, "OPEN_BACKOFF_S", 0.0)
    damaged[2] = damaged[2].replace("c.tar", "gone.tar")
    iterator = iter(StageStream(damaged, 8, batch_size=1, seed=0, shuffle_buffer=1))
    with caplog.at_level("WARNING"), pytest.raises(shards.ShardOpenError, match="gone.tar.*FileNotFoundError"):
        for _ in range(12):
            next(iterator)
    retries = [r.getMessage() for r in caplog.records if "gone.tar" in r.getMessage()]
    assert len(retries) == shards.OPEN_RETRIES and all("retry" in m for m in retries)
    assert not any("corrupt sample" in m for m in retries)  # never counted as skipped samples


def test_damaged_shards_checks_presence_and_recorded_size(tmp_path_factory):
    from dvdp_hr.data.shards import damaged_shards

    root = make_shard_set(tmp_path_factory.mktemp("damaged"), count=12, size=16, resolutions="16,8", shard_size=4)
    assert damaged_shards(str(root), 8) == [] and damaged_shards("data/{res}/s-{0..3}.tar", 8) == []
    (root / "8" / "shard-000001.tar").unlink()
    whole = (root / "8" / "shard-000002.tar").read_bytes()
    (root / "8" / "shard-000002.tar").write_bytes(whole[:-512])
    problems = damaged_shards(str(root), 8)
    assert len(problems) == 2 and "shard-000001.tar: missing" in problems[0]
    assert f"shard-000002.tar: {len(whole) - 512} bytes, the manifest says {len(whole)}" in problems[1]
    assert damaged_shards(str(root), 16) == []


def test_bad_arguments_are_named(shards):
    urls = stage_urls(str(shards), 8)
    for kwargs, message in [
        ({"batch_size": 0}, "batch_size"),
        ({"rank": 2, "world_size": 2}, "rank"),
        ({"seed": -1}, "seed"),
        ({"shuffle_buffer": 0}, "shuffle_buffer"),
    ]:
        with pytest.raises(ValueError, match=message):
            StageStream(urls, 8, **{"batch_size": 2, "seed": 0, **kwargs})


def test_loader_workers_survive_the_stop_signals(shards):
    """SLURM signals every process of a job step: the loader's workers must ignore SIGTERM/SIGUSR1/
    SIGUSR2 (the trainer checkpoints and ends them), or the DataLoader raises mid-step."""
    import os
    import signal
    import time

    import psutil

    stream = StageStream(stage_urls(str(shards), 8), 8, 2, seed=0, num_workers=2, shuffle_buffer=4)
    batches = iter(stream)
    next(batches), next(batches)  # one batch from each worker: both have run their init
    workers = psutil.Process(os.getpid()).children()
    assert len(workers) == 2
    for worker in workers:
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
            os.kill(worker.pid, sig)
    time.sleep(0.5)
    assert all(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    for _ in range(12):  # more than an epoch per worker: both keep producing
        assert next(batches).shape == (2, 3, 8, 8)
