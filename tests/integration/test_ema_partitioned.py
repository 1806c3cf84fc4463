"""The EMA on each rank's own fp32 partition (2 ranks, gloo, CPU): equal to the previous
full-parameter EMA to fp32 rounding, with zero collectives in any update."""
import json
from pathlib import Path

import pytest

from launch import TINY_CONFIG, run_checked, torchrun_cmd

COMMON = ["train.max_images=200", "checkpoint.every_images=1000", "logging.wandb_mode=disabled",
          "logging.progress=false", "logging.sample_count=0", "ema.decays=[0.9]"]


@pytest.mark.parametrize("zero", ["train.zero_stage=2", "train.zero_stage=3"])
def test_partitioned_ema_matches_full_ema_without_collectives(tmp_path, tiny_shards, zero):
    script = str(Path(__file__).with_name("probe_ema.py"))
    run_checked(torchrun_cmd([script, TINY_CONFIG, str(tmp_path), f"data.shards={tiny_shards}", *COMMON, zero]))
    probe = json.loads((tmp_path / "probe_ema.json").read_text())
    assert probe["updates"] >= 5
    assert probe["collectives_in_updates"] == 0
    assert probe["collectives_in_full_gather_updates"] > 0  # the counter sees collectives where there are some
    assert probe["max_abs_diff"] <= 1e-6 * probe["max_abs"], probe
    assert probe["local_numel"] < probe["total_numel"]  # each rank averages only its own slice
