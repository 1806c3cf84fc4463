"""Exact resume: a run SIGKILLed mid-way and rerun with the same command repeats the
uninterrupted run's per-step losses, stats lines, final weights and final sample grid bit for bit
(2 ranks, gloo, CPU), also when a file of the latest checkpoint is damaged (the previous one is then
used). SIGTERM checkpoints at the next step boundary and exits with the requeue code; what a rerun
then does (rejected shards, a new --max-images, a finished run) is checked on it."""
import json
import os
import shutil
import sys
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
OVERRIDES = ["logging.every_steps=4", "logging.progress=false", "logging.sample_every_images=0",
             "logging.sample_count=2", "logging.sample_steps=3", "checkpoint.keep_last=3"]


def _stats(run_dir) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "img_per_s"}
            for line in open(os.path.join(run_dir, "stats.jsonl"))]


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


def _kill_all(proc) -> None:
    """SIGKILL torchrun and its workers: torchrun starts each worker in a session of its own, so
    killing torchrun's process group alone leaves the workers training on."""
    import psutil  # a DeepSpeed dependency

    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    assert len(family) >= 3, "torchrun's workers not found"
    for member in family:
        member.kill()
    proc.wait()
    psutil.wait_procs(family[1:], timeout=30)


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
    _kill_all(proc)
    assert json.load(open(run_dir / "status.json"))["state"] == "running"  # the killed attempt's record
    done_before_kill = len(_losses(run_dir)) if (run_dir / "loss.jsonl").exists() else 0
    assert int(first[3:]) < MAX_IMAGES and done_before_kill < len(_losses(uninterrupted))
    assert (run_dir / "lock").exists()  # left by the killed attempt
    resumed = run_checked(cmd)  # the same command resumes
    assert resumed.stdout.count("resuming from checkpoint img") == 1, resumed.stdout[-2000:]
    assert "taking over the stale run lock" in resumed.stdout and "is gone" in resumed.stdout
    _same_as_uninterrupted(run_dir, uninterrupted, tmp_path)  # per-stage loss windows survive the kill too
    wandb_ids = {json.load(open(run_dir / "checkpoints" / t / "meta.json"))["wandb_id"]
                 for t in os.listdir(run_dir / "checkpoints") if t.startswith("img")}
    assert len(wandb_ids) == 1 and None not in wandb_ids  # the resumed run continued the wandb run


def _same_as_uninterrupted(run_dir, uninterrupted, tmp_path) -> None:
    assert json.load(open(run_dir / "status.json"))["state"] == "finished"
    assert _losses(run_dir) == _losses(uninterrupted)
    assert _stats(run_dir) == _stats(uninterrupted)
    final = (run_dir / "samples" / "final.png").read_bytes()
    assert final == (uninterrupted / "samples" / "final.png").read_bytes()
    resumed, reference = _final_weights(run_dir, tmp_path, "resumed"), _final_weights(uninterrupted, tmp_path, "ref")
    assert resumed.keys() == reference.keys()
    for name in reference:
        assert torch.equal(resumed[name], reference[name]), name


@pytest.mark.slow
def test_a_truncated_file_in_the_latest_checkpoint_falls_back_to_the_previous_one(uninterrupted, tiny_shards,
                                                                                   tmp_path):
    """The uninterrupted run as it stood after publishing its next-to-last checkpoint (killed right
    then: the resume cuts the log lines past it), with one rank's optimizer shard of it cut short."""
    run_dir = tmp_path / "damaged"
    shutil.copytree(uninterrupted, run_dir)
    checkpoints = run_dir / "checkpoints"
    previous, latest, final = sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("img"))
    shutil.rmtree(checkpoints / final)
    (checkpoints / "latest").write_text(latest)
    shard = checkpoints / latest / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    rerun = run_checked(train_cmd(run_dir, tiny_shards, MAX_IMAGES, EVERY, *OVERRIDES))
    assert (f"warning: checkpoint {latest} failed verification (zero_pp_rank_1_mp_rank_00_optim_states.pt: "
            f"{len(data) // 2} bytes, {len(data)} recorded") in rerun.stderr, rerun.stderr[-3000:]
    assert f"resuming from checkpoint {previous}: {int(previous[3:])} images" in rerun.stdout
    _same_as_uninterrupted(run_dir, uninterrupted, tmp_path)


@pytest.mark.slow
def test_stats_lines_report_the_per_stage_mean_loss_of_their_window(uninterrupted):
    losses, stats = _losses(uninterrupted), _stats(uninterrupted)
    saved_at = [r["step"] for a, r in zip(losses, losses[1:]) if a["images"] // EVERY != r["images"] // EVERY]
    assert any(step % 4 for step in saved_at), "no checkpoint inside a logging window: the test shows nothing"
    previous = 0
    for line in stats:
        window = [r for r in losses if previous < r["step"] <= line["step"]]
        stages = sorted({r["stage"] for r in window})
        assert sorted(k for k in line if k.startswith("loss/")) == [f"loss/stage{k}" for k in stages], line
        for k in stages:
            values = [r["loss"] for r in window if r["stage"] == k]
            assert line[f"loss/stage{k}"] == pytest.approx(sum(values) / len(values), rel=1e-12), (line, k)
        previous = line["step"]
    assert previous == losses[-1]["step"]


def _cli_train(run_dir, shards, max_images: int) -> list[str]:
    """One process without a launcher (ranks from defaults), so its exit code is observed directly."""
    return [sys.executable, "-m", "dvdp_hr.cli", "train", "--config", TINY_CONFIG, "--run-dir", str(run_dir),
            "--shards", str(shards), "--max-images", str(max_images), "--checkpoint-every", "64",
            "logging.wandb_mode=disabled", *OVERRIDES]


def _fewer_shards(tiny_shards, out):
    """A consistent shard set with the last shard of every resolution dropped (4 -> 3 shards)."""
    shutil.copytree(tiny_shards, out)
    manifest = json.loads((out / "manifest.json").read_text())
    for res, entry in manifest["sets"].items():
        (out / res / entry["shards"].pop()["name"]).unlink()
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _files(run_dir) -> dict:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_with_requeue_code_then_reruns(tiny_shards, tmp_path):
    run_dir = tmp_path / "term"
    proc = subprocess.Popen(_cli_train(run_dir, tiny_shards, 100000), env=launch_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = _wait_for_checkpoint(run_dir, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == REQUEUE_EXIT_CODE, err[-3000:]
    status = json.load(open(run_dir / "status.json"))
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert status["state"] == "requeue" and latest != first and latest == f"img{status['images']:012d}"
    assert _losses(run_dir)[-1]["step"] == status["step"]
    assert f"stop signal received: checkpoint {latest} saved, exiting with 75 (requeue)" in out
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / latest / "raw.safetensors").is_file()  # a stop checkpoint has the raw weights,
    assert not any((checkpoints / t / "raw.safetensors").exists()  # the ones before it do not (default)
                   for t in os.listdir(checkpoints) if t.startswith("img") and t != latest)
    assert not (run_dir / "lock").exists()

    # a shard set the data streams cannot continue on: a clean config error, config.yaml untouched
    config_before = (run_dir / "config.yaml").read_text()
    rerun = _run(_cli_train(run_dir, _fewer_shards(tiny_shards, tmp_path / "fewer"), 100000))
    assert rerun.returncode == 2 and "Traceback" not in rerun.stderr, rerun.stderr[-3000:]
    assert "data.shards" in rerun.stderr and f"resume with --shards {tiny_shards}" in rerun.stderr
    assert "'num_shards': (4, 3)" in rerun.stderr
    assert (run_dir / "config.yaml").read_text() == config_before
    refused = json.load(open(run_dir / "status.json"))  # this attempt's outcome: no launcher requeues it
    assert refused["state"] == "failed" and refused["reason"].startswith("ConfigError: data.shards")

    # a new --max-images: resumes, warns about the stretched LR decay, finishes with a final grid
    target = status["images"] + 32
    rerun = _run(_cli_train(run_dir, tiny_shards, target))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from checkpoint {latest}: {status['images']} images, step {status['step']}" in rerun.stdout
    assert "train.max_images changed from 100000 (checkpoint) to" in rerun.stdout
    assert json.load(open(run_dir / "status.json"))["state"] == "finished"
    assert (run_dir / "samples" / "final.png").is_file()

    # already finished: says so, exits 0, writes nothing but this attempt's status.json
    before = _files(run_dir)
    rerun = _run(_cli_train(run_dir, tiny_shards, target))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    done = json.load(open(run_dir / "status.json"))
    assert done["state"] == "finished" and done["exit_code"] == 0
    assert f"already at {done['images']} images >= train.max_images={target}; nothing to train" in rerun.stdout
    status_file = str(run_dir / "status.json")
    assert {k: v for k, v in _files(run_dir).items() if k != status_file} == \
        {k: v for k, v in before.items() if k != status_file}


def _run(cmd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=launch_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
