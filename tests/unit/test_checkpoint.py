"""Checkpoint publication (single process): a half-written checkpoint never becomes latest."""
import os
import random

import numpy as np
import pytest
import torch

from dvdp_hr.distributed import checkpoint as ckpt


def _writer(payload: str, crash: bool = False):
    def write_parts(root, tmp_tag):
        with open(os.path.join(root, tmp_tag, "part.txt"), "w") as fh:
            fh.write(payload)
        if crash:
            raise KeyboardInterrupt("killed while writing")
    return write_parts


def _save(run_dir, images, payload, crash=False, keep=3):
    return ckpt.save_checkpoint(str(run_dir), ckpt.make_tag(images), _writer(payload, crash),
                                {"counters": {"images": images}}, keep)


def test_publish_moves_latest_and_keeps_last_n(tmp_path):
    os.makedirs(ckpt.checkpoints_dir(str(tmp_path)))
    assert ckpt.find_latest(str(tmp_path)) is None
    for images in (10, 20, 30, 40):
        _save(tmp_path, images, f"w{images}", keep=2)
        assert ckpt.find_latest(str(tmp_path)) == ckpt.make_tag(images)
    assert ckpt.list_complete(str(tmp_path)) == [ckpt.make_tag(30), ckpt.make_tag(40)]
    assert ckpt.read_meta(str(tmp_path), ckpt.make_tag(40))["counters"]["images"] == 40


def test_milestones_outlive_keep_last_and_pruned_folders_never_look_complete(tmp_path):
    os.makedirs(ckpt.checkpoints_dir(str(tmp_path)))
    for images in (10, 20, 30, 45, 50, 60, 70, 80):
        ckpt.save_checkpoint(str(tmp_path), ckpt.make_tag(images), _writer(f"w{images}"),
                             {"counters": {"images": images}}, 100)
        ckpt.prune(str(tmp_path), 2, keep_every_images=25)
    # first past 0, 25, 50 and 75, plus the newest two
    assert ckpt.list_complete(str(tmp_path)) == [ckpt.make_tag(i) for i in (10, 30, 50, 70, 80)]
    assert ckpt.milestones([ckpt.make_tag(i) for i in (5, 30, 26)], 0) == set()
    leftovers = [d for d in os.listdir(ckpt.checkpoints_dir(str(tmp_path))) if d.startswith(ckpt.TMP_PREFIX)]
    assert leftovers == []


def test_half_written_checkpoint_is_never_latest(tmp_path):
    os.makedirs(ckpt.checkpoints_dir(str(tmp_path)))
    _save(tmp_path, 10, "good")
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 20, "half", crash=True)
    root = ckpt.checkpoints_dir(str(tmp_path))
    assert ckpt.find_latest(str(tmp_path)) == ckpt.make_tag(10)
    assert os.path.isdir(os.path.join(root, ckpt.TMP_PREFIX + ckpt.make_tag(20)))  # left behind, ignored
    assert ckpt.list_complete(str(tmp_path)) == [ckpt.make_tag(10)]
    _save(tmp_path, 30, "next")  # the next save clears the stale temporary folder
    assert not any(d.startswith(ckpt.TMP_PREFIX) for d in os.listdir(root))


def test_latest_naming_an_incomplete_folder_is_an_error(tmp_path):
    root = ckpt.checkpoints_dir(str(tmp_path))
    os.makedirs(os.path.join(root, "img000000000005"))
    with open(os.path.join(root, ckpt.LATEST), "w") as fh:
        fh.write("img000000000005")
    with pytest.raises(ckpt.CheckpointError, match="not a complete checkpoint"):
        ckpt.find_latest(str(tmp_path))


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    torch.manual_seed(3), random.seed(4), np.random.seed(5)
    ckpt.save_rank_state(str(tmp_path), 1, {"rng": ckpt.capture_rng(), "data": {"0": {"batches": 7}}})
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    state = ckpt.load_rank_state(str(tmp_path), 1)  # torch.load(weights_only=True)
    ckpt.restore_rng(state["rng"])
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    assert np.random.rand() == expected[2] and state["data"]["0"]["batches"] == 7
    with pytest.raises(ckpt.CheckpointError, match="fewer ranks"):
        ckpt.load_rank_state(str(tmp_path), 2)


def test_resume_with_another_world_size_stops_with_a_clear_error():
    from dvdp_hr.train.config import load_config
    from dvdp_hr.train.confutil import ConfigError
    from dvdp_hr.train.resume import check_resumable

    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny_cpu.yaml"))
    meta = {"world_size": 2, "config": cfg.to_dict()}
    check_resumable(meta, cfg, 2)
    with pytest.raises(ConfigError, match="written by 2 ranks but this run has 4(.|\n)*--reshard"):
        check_resumable(meta, cfg, 4)
    check_resumable(meta, cfg, 4, reshard=True)  # accepted: a non-exact resume
    changed = load_config(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny_cpu.yaml"),
                          ["model.mode=per_stage"])
    with pytest.raises(ConfigError, match="'model.mode' differs"):
        check_resumable(meta, changed, 2)
    with pytest.raises(ConfigError, match="'model.mode' differs"):
        check_resumable(meta, changed, 4, reshard=True)
