"""Exact resume: after N consumed batches, a fresh StageStream loaded with state_dict() continues
bitwise identically to the uninterrupted stream, with 0 or 2 workers, across epochs, and without
decoding the skipped samples."""

import json

import pytest
import torch
from data_fixtures import make_shard_set

import dvdp_hr.data.stream as stream_module
from dvdp_hr.data import StageStream, stage_urls


@pytest.fixture(scope="module")
def urls(tmp_path_factory):
    shards = make_shard_set(
        tmp_path_factory.mktemp("resume"), count=22, size=16, resolutions="16,8", shard_size=4
    )
    return stage_urls(str(shards), 8)


def make(urls, workers=0, **overrides):
    kwargs = {"batch_size": 3, "seed": 11, "shuffle_buffer": 5, "num_workers": workers, **overrides}
    return StageStream(urls, 8, **kwargs)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_bitwise_identical(urls, workers):
    reference = take(iter(make(urls, workers)), 24)  # ~3 epochs of 22 samples
    for consumed in (1, 7, 16) if workers == 0 else (7,):
        first = make(urls, workers)
        iterator = iter(first)
        take(iterator, consumed)
        state = json.loads(json.dumps(first.state_dict()))  # JSON-able
        del iterator
        resumed = make(urls, workers)
        resumed.load_state_dict(state)
        continued = take(iter(resumed), 24 - consumed)
        assert all(torch.equal(a, b) for a, b in zip(continued, reference[consumed:]))
        assert resumed.state_dict()["batches"] == 24


def test_zero_and_one_worker_are_the_same_stream(urls):
    assert all(
        torch.equal(a, b)
        for a, b in zip(take(iter(make(urls, 0)), 5), take(iter(make(urls, 1)), 5))
    )


def test_resume_does_not_decode_skipped_samples(urls, monkeypatch):
    first = make(urls, batch_size=2, shuffle_buffer=3)
    take(iter(first), 10)
    decoded = []
    original = stream_module.decode_rgb
    monkeypatch.setattr(
        stream_module, "decode_rgb", lambda data, size: decoded.append(1) or original(data, size)
    )
    resumed = make(urls, batch_size=2, shuffle_buffer=3)
    resumed.load_state_dict(first.state_dict())
    take(iter(resumed), 1)
    assert len(decoded) == 2


def test_state_from_other_settings_is_refused(urls):
    state = make(urls).state_dict()
    for change in ({"seed": 12}, {"batch_size": 4}, {"num_workers": 2}):
        with pytest.raises(ValueError, match="settings changed"):
            make(urls, **change).load_state_dict(state)
    with pytest.raises(ValueError, match="settings changed"):
        make(urls[:-1]).load_state_dict(state)


def test_worker_stream_leaves_the_global_rng_untouched(urls):
    """The trainer seeds dropout from the global RNG right before the first batch of a stage;
    starting DataLoader workers must not consume from it (or a resumed run would diverge)."""
    torch.manual_seed(5)
    next(iter(make(urls, workers=1)))
    after_stream = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after_stream, torch.rand(3))
