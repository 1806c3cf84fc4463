"""Evaluation during training (2 ranks, gloo, CPU): every rank samples its share, the per-stage SWD
lands in stats.jsonl, RUN/best.json names a checkpoint of an evaluated step, and pruning keeps it."""
import json
import os

from dvdp_hr.distributed import checkpoint as ckpt
from launch import run_checked, train_cmd

OVERRIDES = ["evaluation.every_images=96", "evaluation.count=8", "evaluation.steps=3", "evaluation.batch=2",
             "checkpoint.keep_last=1", "logging.sample_every_images=0", "logging.sample_count=4",
             "logging.sample_steps=3", "logging.wandb_mode=disabled", "logging.progress=false"]


def test_evaluation_logs_per_stage_swd_and_keeps_the_best_checkpoint(tmp_path, tiny_shards):
    proc = run_checked(train_cmd(tmp_path, tiny_shards, 320, 1000, *OVERRIDES))
    evals = [r for r in map(json.loads, open(tmp_path / "stats.jsonl")) if "eval/swd" in r]
    assert len(evals) >= 3, evals
    for record in evals:
        assert {"eval/swd/stage0", "eval/swd/stage1", "eval/swd/stage2"} <= set(record)
        assert all(record[k] > 0 for k in record if k.startswith("eval/"))
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["metric"] == "swd" and best["value"] == min(r["eval/swd"] for r in evals)
    assert best["tag"] == ckpt.make_tag(best["images"])
    assert best["tag"] in ckpt.list_complete(str(tmp_path))  # kept although keep_last=1
    assert "evaluation at" in proc.stdout
    assert os.path.isfile(tmp_path / "samples" / "final.png")  # the final grid, drawn by both ranks
