"""The sample folder: atomic PNGs, what counts as finished, settings refusal, tar shards."""
import os
import tarfile

import numpy as np
import pytest

from dvdp_hr.sampling import outdir as od


def _pixels(seed):
    return np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)


def test_finished_seeds_skip_truncated_pngs_and_temporaries(tmp_path):
    for seed in (0, 1, 2):
        od.write_png(str(tmp_path), seed, _pixels(seed))
    data = (tmp_path / od.png_name(2)).read_bytes()
    (tmp_path / od.png_name(2)).write_bytes(data[:-20])  # a crash mid-write of the final file
    (tmp_path / (od.png_name(3) + ".tmp-123")).write_bytes(data)  # a killed writer's temporary
    assert od.finished_seeds(str(tmp_path), [0, 1, 2, 3]) == {0, 1}
    assert od.remove_temporaries(str(tmp_path)) == 1 and not any(".tmp-" in n for n in os.listdir(tmp_path))
    plan = [[0, 1], [2, 3]]
    assert od.pending_batches(plan, {0, 1, 3}) == [[2, 3]]  # a batch is redrawn whole


def test_other_settings_are_refused_with_the_fix(tmp_path):
    settings = {"seeds": "0-9", "steps": 50, "method": "ddim"}
    od.check_settings(str(tmp_path), settings)
    od.check_settings(str(tmp_path), dict(settings))  # the same settings: fine
    with pytest.raises(od.OutdirError, match=r"steps: 50 there, 100 now.*new --outdir"):
        od.check_settings(str(tmp_path), dict(settings, steps=100))


def test_shards_hold_their_seed_range_with_deterministic_bytes(tmp_path):
    seeds = [5, 6, 7, 8, 9]
    for folder in ("a", "b"):
        os.makedirs(tmp_path / folder)
        for seed in seeds:
            od.write_png(str(tmp_path / folder), seed, _pixels(seed))
        for index in range(od.num_shards(len(seeds), 2)):
            od.pack_shard(str(tmp_path / folder), seeds, 2, index)
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]  # PNGs packed and removed
    assert (tmp_path / "a" / "shard-000001.tar").read_bytes() == (tmp_path / "b" / "shard-000001.tar").read_bytes()
    with tarfile.open(tmp_path / "a" / "shard-000001.tar") as tar:
        assert tar.getnames() == [od.png_name(7), od.png_name(8)]
    assert od.finished_seeds(str(tmp_path / "a"), seeds, 2) == set(seeds)
