"""Exact resume: a run SIGKILLed mid-way and rerun with the same command repeats the
uninterrupted run's per-step losses and final weights bit for bit (2 ranks, gloo, CPU).
SIGTERM checkpoints at the next step boundary and exits with the requeue code."""
import json
import os
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from dvdp_hr.distributed.signals import REQUEUE_EXIT_CODE
from dvdp_hr.export import export
from launch import REPO, TINY_CONFIG, launch_env, run_checked, train_cmd

MAX_IMAGES, EVERY = 480, 128
OVERRIDES = ["logging.every_steps=4", "logging.progress=false", "logging.sample_every_images=0"]


def _losses(run_dir) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(run_dir, "loss.jsonl"))]


def _wait_for_checkpoint(run_dir, proc, timeout=300) -> str:
    latest = os.path.join(run_dir, "checkpoints", "latest")
    deadline = time.time() + timeout
    while not os.path.exists(latest):
        assert proc.poll() is None, f"training ended (rc={proc.returncode}) before its first checkpoint"
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.2)
    return open(latest).read().strip()


def _final_weights(run_dir, tmp_path, name) -> dict:
    ema = export([str(run_dir)], str(tmp_path / f"{name}-ema.safetensors"))
    export([str(run_dir)], str(tmp_path / f"{name}-raw.safetensors"), raw=True)
    assert ema["sources"][0]["images"] >= MAX_IMAGES
    return {**{f"ema/{k}": v for k, v in load_file(str(tmp_path / f"{name}-ema.safetensors")).items()},
            **{f"raw/{k}": v for k, v in load_file(str(tmp_path / f"{name}-raw.safetensors")).items()}}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_shards):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    run_checked(train_cmd(run_dir, tiny_shards, MAX_IMAGES, EVERY, *OVERRIDES))
    return run_dir


@pytest.mark.slow
def test_sigkill_and_rerun_matches_uninterrupted_run(uninterrupted, tiny_shards, tmp_path):
    run_dir = tmp_path / "killed"
    cmd = train_cmd(run_dir, tiny_shards, MAX_IMAGES, EVERY, *OVERRIDES)
    proc = subprocess.Popen(cmd, env=launch_env(), cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = _wait_for_checkpoint(run_dir, proc)
    time.sleep(0.5)  # a few steps past the checkpoint, possibly inside the next save
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "status.json").exists()
    done_before_kill = len(_losses(run_dir)) if (run_dir / "loss.jsonl").exists() else 0
    assert int(first[3:]) < MAX_IMAGES and done_before_kill < len(_losses(uninterrupted))
    run_checked(cmd)  # the same command resumes
    assert json.load(open(run_dir / "status.json"))["state"] == "finished"
    assert _losses(run_dir) == _losses(uninterrupted)
    killed, reference = _final_weights(run_dir, tmp_path, "killed"), _final_weights(uninterrupted, tmp_path, "ref")
    assert killed.keys() == reference.keys()
    for name in reference:
        assert torch.equal(killed[name], reference[name]), name
    wandb_ids = {json.load(open(run_dir / "checkpoints" / t / "meta.json"))["wandb_id"]
                 for t in os.listdir(run_dir / "checkpoints") if t.startswith("img")}
    assert len(wandb_ids) == 1 and None not in wandb_ids  # the resumed run continued the wandb run


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_with_requeue_code(tiny_shards, tmp_path):
    """One process without a launcher (ranks from defaults), so its exit code is observed directly."""
    run_dir = tmp_path / "term"
    cmd = ["python", "-m", "dvdp_hr.cli", "train", "--config", TINY_CONFIG, "--run-dir", str(run_dir),
           "--shards", str(tiny_shards), "--max-images", "100000", "--checkpoint-every", "64",
           "logging.wandb_mode=disabled", *OVERRIDES]
    cmd[0] = __import__("sys").executable
    proc = subprocess.Popen(cmd, env=launch_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = _wait_for_checkpoint(run_dir, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == REQUEUE_EXIT_CODE, err[-3000:]
    status = json.load(open(run_dir / "status.json"))
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert status["state"] == "requeue" and latest != first and latest == f"img{status['images']:012d}"
    assert _losses(run_dir)[-1]["step"] == status["step"]
