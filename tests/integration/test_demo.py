"""`dvdp-hr demo` end to end with a small budget: real shards, both arms trained by DeepSpeed on 2
CPU processes, sampled and scored (SWD, per-stage SWD, FID/KID with a small local feature network),
plots and the summary. Rerunning it resumes: nothing is trained twice."""
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from launch import REPO, launch_env
from sampling_helpers import fake_inception

pytestmark = pytest.mark.slow


def demo_cmd(run_dir, inception) -> list[str]:
    return [sys.executable, "-m", "dvdp_hr.cli", "demo", "--run-dir", str(run_dir), "--images", "400",
            "--count", "16", "--steps", "10", "--train-photos", "128", "--inception", str(inception)]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    inception = fake_inception(root / "inception.pt")
    run_dir = root / "run"
    proc = subprocess.run(demo_cmd(run_dir, inception), env=launch_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return run_dir, inception, proc.stdout, json.loads((run_dir / "summary.json").read_text())


def test_both_arms_use_the_same_training_flops(demo_run):
    _, _, _, summary = demo_run
    dvdp, fixed = summary["arms"]
    assert (dvdp["name"], fixed["name"]) == ("dvdp", "fixed")
    assert dvdp["resolutions"] == [64, 32, 16] and fixed["resolutions"] == [64]
    assert dvdp["train_images"] >= 400 and all(n > 0 for n in dvdp["train_images_per_stage"])
    # the fixed arm stops at the first whole step past its budget: 8 images x 2 ranks of 64 px at most
    one_step = 16 * fixed["train_flops_per_image"][0]
    assert 0 <= fixed["train_flops"] - dvdp["train_flops"] < one_step
    assert fixed["train_images"] < dvdp["train_images"]  # a 64 px image costs more than DVDP's mix


def test_sampling_cost_and_scores_are_reported(demo_run):
    _, _, _, summary = demo_run
    dvdp, fixed = summary["arms"]
    assert dvdp["sample_flops_per_image"] < fixed["sample_flops_per_image"]  # most DVDP steps run below 64 px
    assert sorted(dvdp["stages"]) == ["0", "1", "2"] and list(fixed["stages"]) == ["0"]
    for arm in (dvdp, fixed):
        assert arm["sample_seconds_per_image"] > 0 and arm["train_seconds"] > 0
        assert arm["stages"]["0"]["swd_mean"] > 0 and arm["fid"] >= 0 and "kid" in arm
    assert 0 < summary["floor"]["swd_mean"]


def test_writes_the_plots_and_the_table(demo_run):
    run_dir, _, stdout, summary = demo_run
    for name in ("loss_curves.png", "samples.png"):
        with Image.open(run_dir / name) as image:
            assert image.size[0] > 400 and image.size[1] > 100  # 16 images: two rows of 8 per panel
    table = (run_dir / "summary.md").read_text()
    for arm in summary["arms"]:
        assert arm["label"] in table and arm["label"] in stdout
    assert "held-out photos (floor)" in table and "| FID | KID" in table
    assert all(os.path.exists(path) for path in summary["outputs"].values())
    assert "[demo 6/6" in stdout


def test_rerun_resumes_without_training_again(demo_run):
    run_dir, inception, _, summary = demo_run
    losses = {arm: (run_dir / arm / "loss.jsonl").read_text() for arm in ("dvdp", "fixed")}
    proc = subprocess.run(demo_cmd(run_dir, inception), env=launch_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert {arm: (run_dir / arm / "loss.jsonl").read_text() for arm in losses} == losses
    again = json.loads((run_dir / "summary.json").read_text())
    assert [a["train_flops"] for a in again["arms"]] == [a["train_flops"] for a in summary["arms"]]
    assert [a["stages"]["0"]["swd_mean"] for a in again["arms"]] == [a["stages"]["0"]["swd_mean"] for a in summary["arms"]]
