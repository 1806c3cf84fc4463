"""Checkpoint integrity (single process): per-file checksums, verification and fallback at resume,
pruning around `latest`, the background writer's error handling, export without raw weights."""
import json
import os
import threading

import pytest
import torch
from safetensors.torch import save_file

from dvdp_hr.distributed import checkpoint as ckpt
from dvdp_hr.distributed import integrity
from dvdp_hr.distributed.writer import BackgroundWriter, WriterError
from dvdp_hr.export import ExportError, export
from dvdp_hr.train.resume_choice import choose_checkpoint


def _save(run_dir, images, keep=5, parts=None):
    """A checkpoint of a 2-rank-shaped layout written by one process."""
    parts = parts or {"mp_rank_00_model_states.pt": b"model" * 100, "zero_pp_rank_0_mp_rank_00_optim_states.pt": b"o0",
                      "zero_pp_rank_1_mp_rank_00_optim_states.pt": b"o1" * 50, "rank-00000.pt": b"r0"}

    def write_parts(root, tmp_tag):
        for name, data in parts.items():
            with open(os.path.join(root, tmp_tag, name), "wb") as fh:
                fh.write(data)

    os.makedirs(ckpt.checkpoints_dir(str(run_dir)), exist_ok=True)
    return ckpt.save_checkpoint(str(run_dir), ckpt.make_tag(images), write_parts,
                                {"counters": {"images": images}}, keep)


def test_deepspeed_file_names_map_to_the_rank_that_writes_them():
    assert integrity.writer_rank("mp_rank_00_model_states.pt") == 0  # ZeRO 1/2: dp rank 0 only
    assert integrity.writer_rank("zero_pp_rank_3_mp_rank_00_optim_states.pt") == 3
    assert integrity.writer_rank("bf16_zero_pp_rank_12_mp_rank_00_optim_states.pt") == 12
    assert integrity.writer_rank("zero_pp_rank_5_mp_rank_00_model_states.pt") == 5  # ZeRO-3
    assert integrity.writer_rank("rank-00007.pt") == 7
    assert integrity.writer_rank("ema-0.999.safetensors") == 0 and integrity.writer_rank("config.yaml") == 0


def test_meta_records_size_and_sha256_of_every_file(tmp_path):
    folder = _save(tmp_path, 10)
    files = ckpt.read_meta(str(tmp_path), ckpt.make_tag(10))["files"]
    assert sorted(files) == sorted(n for n in os.listdir(folder) if n != ckpt.META)
    assert files["mp_rank_00_model_states.pt"]["bytes"] == 500
    assert integrity.verify_share(folder, files, 0, 1) == []
    shares = [integrity.share(files, r, 3) for r in range(3)]
    assert sorted(sum(shares, [])) == sorted(files)  # every file verified exactly once
    assert shares[0][0] == "mp_rank_00_model_states.pt"  # the largest first


@pytest.mark.parametrize("damage, expected", [
    ("truncate", "zero_pp_rank_1_mp_rank_00_optim_states.pt: 50 bytes, 100 recorded"),
    ("flip", "zero_pp_rank_1_mp_rank_00_optim_states.pt: sha256 differs"),
    ("delete", "zero_pp_rank_1_mp_rank_00_optim_states.pt: missing"),
])
def test_a_damaged_latest_falls_back_to_the_previous_checkpoint(tmp_path, capsys, damage, expected):
    _save(tmp_path, 10)
    folder = _save(tmp_path, 20)
    path = os.path.join(folder, "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    if damage == "delete":
        os.unlink(path)
    else:
        data = open(path, "rb").read()
        with open(path, "wb") as fh:
            fh.write(data[:50] if damage == "truncate" else b"X" + data[1:])
    tag, meta = choose_checkpoint(str(tmp_path), ckpt.resume_candidates(str(tmp_path)), 0, 1)
    assert tag == ckpt.make_tag(10) and meta["counters"]["images"] == 10
    err = capsys.readouterr().err
    assert f"checkpoint {ckpt.make_tag(20)} failed verification ({expected}" in err
    assert "trying the previous complete checkpoint" in err


def test_no_valid_checkpoint_is_an_error_naming_every_damage(tmp_path):
    folder = _save(tmp_path, 10)
    os.unlink(os.path.join(folder, "rank-00000.pt"))
    expected = r"no checkpoint .* verifies:\n  img000000000010: rank-00000.pt: missing"
    with pytest.raises(ckpt.CheckpointError, match=expected):
        choose_checkpoint(str(tmp_path), ckpt.resume_candidates(str(tmp_path)), 0, 1)
    assert choose_checkpoint(str(tmp_path / "empty"), [], 0, 1) is None


def test_a_checkpoint_without_checksums_is_accepted_with_a_note(tmp_path, capsys):
    folder = _save(tmp_path, 10)
    meta = json.load(open(os.path.join(folder, ckpt.META)))
    del meta["files"]
    ckpt.write_atomic(os.path.join(folder, ckpt.META), json.dumps(meta))
    tag, _ = choose_checkpoint(str(tmp_path), [ckpt.make_tag(10)], 0, 1)
    assert tag == ckpt.make_tag(10) and "predates per-file checksums" in capsys.readouterr().out


def test_candidates_and_pruning_stop_at_latest(tmp_path):
    for images in (10, 20, 30):
        _save(tmp_path, images, keep=2)
    assert ckpt.list_complete(str(tmp_path)) == [ckpt.make_tag(20), ckpt.make_tag(30)]
    ckpt.write_atomic(os.path.join(ckpt.checkpoints_dir(str(tmp_path)), ckpt.LATEST), ckpt.make_tag(20))
    assert ckpt.resume_candidates(str(tmp_path)) == [ckpt.make_tag(20)]  # a latest moved back is honoured
    _save(tmp_path, 25, keep=1)  # prunes 20 (up to latest) but never 30 (newer than latest)
    assert ckpt.list_complete(str(tmp_path)) == [ckpt.make_tag(25), ckpt.make_tag(30)]


def test_writer_errors_surface_at_the_next_join_and_jobs_never_overlap():
    for background in (True, False):
        writer, running, overlaps = BackgroundWriter(background), threading.Lock(), []

        def job(fail=False):
            if not running.acquire(blocking=False):
                overlaps.append(1)
            try:
                if fail:
                    raise OSError("disk full")
            finally:
                running.release()

        writer.submit("img1", job)
        writer.submit("img2", lambda: job(fail=True))  # waits for img1 first
        with pytest.raises(WriterError, match="writing checkpoint img2 failed: OSError: disk full"):
            writer.join()
        writer.join()  # reported once
        assert not overlaps


def test_export_raw_without_raw_weights_names_the_fix(tmp_path):
    cfg = {"schedule": {k: 0 for k in ("resolution", "root_resolution", "num_steps", "turning_points",
                                       "beta_schedule", "ramp")}, "model": {}}

    def write_parts(root, tmp_tag):
        save_file({"w": torch.zeros(1)}, os.path.join(root, tmp_tag, "ema-0.99.safetensors"))

    os.makedirs(ckpt.checkpoints_dir(str(tmp_path)))
    ckpt.save_checkpoint(str(tmp_path), ckpt.make_tag(8), write_parts,
                         {"counters": {"images": 8}, "config": cfg, "ema_decays": [0.99], "trained_stages": [0]}, 2)
    with pytest.raises(ExportError, match=r"checkpoint img000000000008 .* holds no consolidated raw weights "
                                          r"\(raw.safetensors\).*final and stop checkpoints.*no checkpoint of this "
                                          r"run has them yet.*drop --raw.*checkpoint.raw_weights=every"):
        export([str(tmp_path)], str(tmp_path / "out.safetensors"), raw=True)
