"""--reshard: a checkpoint written by 2 ranks is refused on 1 rank (naming --reshard), and resumed
with it: weights and optimizer state exactly as saved (not re-initialised), counters continued,
the log says the resume is not exact; later resumes on the new world size are exact again."""
import json
import os
import subprocess
import sys

import pytest

from launch import REPO, TINY_CONFIG, launch_env, run_checked, torchrun_cmd, train_cmd

OVERRIDES = ["logging.every_steps=4", "logging.progress=false", "logging.sample_every_images=0",
             "logging.sample_count=0", "checkpoint.raw_weights=every"]
FIRST, SECOND, THIRD = 128, 192, 224


def _cli(run_dir, shards, max_images: int, *extra: str) -> list[str]:
    """One rank, launched without torchrun (as test_resume does) so the CLI's exit code comes back."""
    return [sys.executable, "-m", "dvdp_hr.cli", "train", "--config", TINY_CONFIG, "--run-dir", str(run_dir),
            "--shards", str(shards), "--max-images", str(max_images), "--checkpoint-every", "64",
            *extra, *OVERRIDES]


def _meta(run_dir) -> dict:
    tag = open(os.path.join(run_dir, "checkpoints", "latest")).read().strip()
    return json.load(open(os.path.join(run_dir, "checkpoints", tag, "meta.json")))


@pytest.mark.slow
def test_reshard_two_ranks_to_one(tiny_shards, tmp_path):
    run_dir = tmp_path / "run"
    run_checked(train_cmd(run_dir, tiny_shards, FIRST, 64, *OVERRIDES))
    saved = _meta(run_dir)
    assert saved["world_size"] == 2 and saved["counters"]["images"] >= FIRST

    refused = subprocess.run(_cli(run_dir, tiny_shards, SECOND), env=launch_env(), cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert "--reshard" in refused.stdout + refused.stderr
    assert _meta(run_dir) == saved  # nothing written

    probe = run_checked(torchrun_cmd([str(REPO / "tests" / "integration" / "probe_reshard.py"), TINY_CONFIG,
                                      str(run_dir), f"data.shards={tiny_shards}", f"train.max_images={SECOND}",
                                      "checkpoint.every_images=64", *OVERRIDES], nproc=1))
    report = json.load(open(run_dir / "probe_reshard.json"))
    c = saved["counters"]
    assert (report["images"], report["step"]) == (c["images"], c["step"])
    assert report["weights_equal"], "resharded weights differ from the checkpoint's consolidated weights"
    # AdamW's step count continued (a fresh optimizer would hold no state, or step 0 moments)
    assert report["moments_nonzero"] and report["adam_steps"] == [c["step"] - c["skipped_total"]], report
    log = probe.stdout + probe.stderr
    assert "NOT exact" in log and "2 ranks" in log and "optimizer state (DeepSpeed universal" in log, log[-3000:]
    assert not (run_dir / "reshard").exists()
    after = _meta(run_dir)
    assert after["world_size"] == 1 and after["counters"]["images"] >= SECOND
    assert after["data_reseed"] == c["images"]
    assert after["counters"]["step"] > c["step"]
    status = json.load(open(run_dir / "status.json"))
    assert status["state"] == "finished", status

    # same world size again: --reshard changes nothing, the (reseeded) streams resume exactly
    again = run_checked(_cli(run_dir, tiny_shards, THIRD, "--reshard"))
    assert "NOT exact" not in again.stdout + again.stderr
    final = _meta(run_dir)
    assert final["world_size"] == 1 and final["counters"]["images"] >= THIRD
    assert final["data_reseed"] == c["images"]
