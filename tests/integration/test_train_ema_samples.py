"""A 2-rank bf16 ZeRO-2 run (gloo, CPU): the EMA averages DeepSpeed's fp32 master weights (not
their bf16 rounding); a checkpoint due at the same step as a sample grid is written first; a
failing sample grid on rank 0 is logged and the run finishes with samples/final.png."""
import os

import pytest
import torch
from safetensors.torch import load_file

from dvdp_hr.distributed import checkpoint as ckpt
from dvdp_hr.export import export
from dvdp_hr.train.config import load_config
from dvdp_hr.train.setup import build_model, build_schedule
from launch import run_checked, train_cmd

EVERY = 64
# decay 1e-9: each update replaces the EMA by the master weights (to fp32 rounding)
OVERRIDES = ["train.zero_stage=2", "train.precision=bf16", "ema.decays=[0.000000001]", "ema.every_steps=1",
             f"logging.sample_every_images={EVERY}", "logging.sample_count=2", "logging.sample_steps=3",
             "checkpoint.keep_last=10", "logging.wandb_mode=disabled", "logging.progress=false"]


def _newest_mtime(folder: str) -> float:
    return max(os.path.getmtime(os.path.join(root, f)) for root, _, files in os.walk(folder) for f in files)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_shards):
    run_dir = tmp_path_factory.mktemp("bf16-ema")
    # Steps add 16 or 32 images, so the first grid is due at 64 or 80 images: a folder in the way of
    # that PNG makes rank 0's sampling fail (a real I/O error); the second grid (128 or 144) succeeds.
    for images in (64, 80):
        os.makedirs(run_dir / "samples" / f"{ckpt.make_tag(images)}.png")
    proc = run_checked(train_cmd(run_dir, tiny_shards, 160, EVERY, *OVERRIDES))
    return run_dir, proc


@pytest.mark.slow
def test_sampling_failure_is_logged_and_grids_follow_their_checkpoint(run):
    run_dir, proc = run
    assert "failed; training continues" in proc.stderr
    grids = [f for f in os.listdir(run_dir / "samples") if os.path.isfile(run_dir / "samples" / f)]
    assert "final.png" in grids, grids
    grids.remove("final.png")
    assert len(grids) == 1, grids
    tag = grids[0][:-len(".png")]
    checkpoint = ckpt.checkpoints_dir(str(run_dir))
    assert os.path.isdir(os.path.join(checkpoint, tag)), f"no checkpoint at the grid's step {tag}"
    assert os.path.getmtime(run_dir / "samples" / grids[0]) >= _newest_mtime(os.path.join(checkpoint, tag))
    # the final grid (EMA at the end of the run) follows the final checkpoint
    final_tag = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert os.path.getmtime(run_dir / "samples" / "final.png") >= _newest_mtime(os.path.join(checkpoint, final_tag))


@pytest.mark.slow
def test_ema_follows_fp32_master_weights_not_their_bf16_rounding(run, tmp_path):
    run_dir, _ = run
    export([str(run_dir)], str(tmp_path / "ema.safetensors"))
    export([str(run_dir)], str(tmp_path / "raw.safetensors"), raw=True)  # fp32 merged from the ZeRO shards
    ema, raw = load_file(str(tmp_path / "ema.safetensors")), load_file(str(tmp_path / "raw.safetensors"))
    cfg = load_config(str(run_dir / "config.yaml"))
    names = [n for n, _ in build_model(cfg, build_schedule(cfg)).named_parameters()]
    rounded_apart = 0
    for name in names:
        master = raw[name].float()
        assert torch.allclose(ema[name], master, rtol=1e-6, atol=1e-9), (name, (ema[name] - master).abs().max())
        rounded_apart += not torch.allclose(master.bfloat16().float(), master, rtol=1e-6, atol=1e-9)
    assert rounded_apart > len(names) // 2, "the master weights are bf16 values: the test cannot tell them apart"
