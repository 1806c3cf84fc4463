"""Checkpoint cost and safety on 2 CPU ranks: a background-written checkpoint equals a foreground
one file for file, raw weights only at the end by default, a wall-clock cadence, and the run lock."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from dvdp_hr.cli import main as cli
from dvdp_hr.distributed import integrity
from dvdp_hr.distributed.env import free_port
from launch import REPO, TINY_CONFIG, launch_env, run_checked, train_cmd

MAX_IMAGES, EVERY = 96, 32
COMMON = ["logging.every_steps=4", "logging.progress=false", "logging.sample_every_images=0",
          "logging.sample_count=0", "logging.wandb_mode=disabled", "checkpoint.keep_last=10"]
TAGS = [f"img{n:012d}" for n in (32, 64, 96)]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_shards):
    """The same 2-rank run with rank 0's checkpoint files written in the background and inline."""
    runs = {}
    for background in (True, False):
        run_dir = tmp_path_factory.mktemp(f"background-{background}")
        run_checked(train_cmd(run_dir, tiny_shards, MAX_IMAGES, EVERY, *COMMON,
                              f"checkpoint.background={str(background).lower()}"))
        runs[background] = run_dir
    return runs


def _checkpoint_files(run_dir) -> dict:
    root = run_dir / "checkpoints"
    return {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file() and p.parent != root}


def _without_background_flag(config: dict) -> dict:
    config = json.loads(json.dumps(config))
    config["checkpoint"].pop("background")
    return config


def _same_rank_state(a, b) -> None:
    """rank-<r>.pt holds the process-wide Python and NumPy RNG states, which nothing seeds (two
    processes differ there whatever the writer); everything else must be equal."""
    a, b = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    for state in (a, b):
        for key in ("python", "python_version", "numpy", "numpy_pos"):
            state["rng"].pop(key)
    assert json.dumps(a["data"], sort_keys=True) == json.dumps(b["data"], sort_keys=True)
    assert a["rng"].keys() == b["rng"].keys()
    assert all(torch.equal(a["rng"][k], b["rng"][k]) for k in a["rng"])


def _same_meta(a, b) -> None:
    a, b = json.loads(a.read_text()), json.loads(b.read_text())
    for meta in (a, b):
        meta["config"] = _without_background_flag(meta["config"])
        for name in [n for n in meta["files"] if n == "config.yaml" or n.startswith("rank-")]:
            meta["files"].pop(name)  # compared by content above
        meta["provenance"].pop("git_commit")  # a commit to the checkout between the two runs moves it
    assert a == b


@pytest.mark.slow
def test_background_and_foreground_checkpoints_are_identical(two_runs):
    """Every file byte for byte (DeepSpeed's pickles, EMA and raw safetensors), except: config.yaml
    and meta.json differ in checkpoint.background itself (meta.json: also in the checksums of those
    files), rank-<r>.pt in the unseeded process RNGs."""
    background, foreground = _checkpoint_files(two_runs[True]), _checkpoint_files(two_runs[False])
    assert background.keys() == foreground.keys() and {k.split("/")[0] for k in background} == set(TAGS)
    for name, path in background.items():
        other, base = foreground[name], os.path.basename(name)
        if base == "config.yaml":
            assert _without_background_flag(yaml.safe_load(path.read_text())) == \
                _without_background_flag(yaml.safe_load(other.read_text()))
        elif base == "meta.json":
            _same_meta(path, other)
        elif base.startswith("rank-"):
            _same_rank_state(path, other)
        else:
            assert path.read_bytes() == other.read_bytes(), name
    for run_dir in two_runs.values():  # and what meta.json records is what is on disk
        for tag in TAGS:
            folder = run_dir / "checkpoints" / tag
            files = json.loads((folder / "meta.json").read_text())["files"]
            assert sorted(files) == sorted(p.name for p in folder.iterdir() if p.name != "meta.json")
            assert integrity.verify_share(str(folder), files, 0, 1) == []
        assert not (run_dir / "lock").exists()


@pytest.mark.slow
def test_raw_weights_only_in_the_final_checkpoint_by_default(two_runs, tmp_path, capsys):
    run_dir = two_runs[True]
    assert [(run_dir / "checkpoints" / t / "raw.safetensors").is_file() for t in TAGS] == [False, False, True]
    out = str(tmp_path / "raw.safetensors")
    assert cli(["export", "--run-dir", str(run_dir), "--raw", "--out", out]) == 0
    assert cli(["export", "--run-dir", str(run_dir), "--raw", "--checkpoint", TAGS[0], "--out", out]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {TAGS[0]}" in err and "holds no consolidated raw weights" in err
    assert f"checkpoints with them: {TAGS[-1]}" in err and "checkpoint.raw_weights=every" in err


@pytest.mark.slow
def test_every_minutes_saves_on_the_clock(tiny_shards, tmp_path):
    run_dir = tmp_path / "clock"
    proc = run_checked(train_cmd(run_dir, tiny_shards, MAX_IMAGES, 10**6, *COMMON, "checkpoint.every_minutes=0.0001"))
    tags = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("img"))
    steps = len((run_dir / "loss.jsonl").read_text().splitlines())
    assert len(tags) == steps >= 3, (tags, steps, proc.stdout[-2000:])  # 6 ms cadence: a save after every step


def _ranks_without_launcher(args: list[str], nproc: int = 2) -> list[subprocess.CompletedProcess]:
    """One process per rank, ranks from the environment: each one's own exit code is observed
    (torchrun would stop the others once the first exits)."""
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "dvdp_hr.cli", *args], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=launch_env(RANK=str(r), WORLD_SIZE=str(nproc), LOCAL_RANK=str(r),
                                             MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for r in range(nproc)]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=300), *p.communicate()) for p in procs]


@pytest.mark.slow
def test_a_second_trainer_on_a_locked_run_exits_2_naming_the_holder(tiny_shards, tmp_path):
    run_dir = tmp_path / "locked"
    run_dir.mkdir()
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": "123", "slurm_restart_count": 0,
              "started": "2026-01-01 00:00:00 UTC", "token": "test"}
    (run_dir / "lock").write_text(json.dumps(holder))
    ranks = _ranks_without_launcher(["train", "--config", TINY_CONFIG, "--run-dir", str(run_dir), "--shards",
                                     str(tiny_shards), "--max-images", str(MAX_IMAGES), *COMMON])
    for proc in ranks:  # every rank learned the outcome from rank 0 and stopped with a config error
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert f"is in use by another trainer (host {holder['host']}, pid {os.getpid()}, SLURM job 123" in proc.stderr
        assert f"delete {run_dir / 'lock'}" in proc.stderr
    assert json.loads((run_dir / "lock").read_text()) == holder  # untouched
    assert not (run_dir / "checkpoints" / "latest").exists() and not (run_dir / "config.yaml").exists()
