"""2-rank CPU runs (gloo) under ZeRO 1, 2 and 3, shared and per-stage denoisers; exports from
each reload to exactly the live EMA model's outputs, raw exports to the live weights."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from launch import TINY_CONFIG, run_checked, torchrun_cmd
from dvdp_hr import load_pretrained
from dvdp_hr.cli import main as cli
from dvdp_hr.export import ExportError, export
from dvdp_hr.train.config import load_config
from dvdp_hr.train.setup import build_model, build_schedule
from probe_train import ema_outputs

CASES = {
    "zero1-per_stage": ["train.zero_stage=1", "model.mode=per_stage"],
    "zero2-per_stage-stage0": ["train.zero_stage=2", "model.mode=per_stage", "train.stages=[0]"],
    "zero3-per_stage-stages12": ["train.zero_stage=3", "model.mode=per_stage", "train.stages=[1,2]"],
    "zero3-shared-bf16": ["train.zero_stage=3", "train.precision=bf16"],
}
COMMON = ["train.max_images=160", "checkpoint.every_images=96", "logging.wandb_mode=disabled",
          "logging.progress=false", "logging.every_steps=3", "logging.sample_count=0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_shards):
    """Each case trained once, on first use."""
    cache = {}

    def get(case: str):
        if case not in cache:
            run_dir = tmp_path_factory.mktemp(case)
            script = str(Path(__file__).with_name("probe_train.py"))
            run_checked(torchrun_cmd([script, TINY_CONFIG, str(run_dir), f"data.shards={tiny_shards}",
                                      *COMMON, *CASES[case]]))
            cache[case] = run_dir
        return cache[case]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_export_reloads_to_live_ema_and_weights(case, runs, tmp_path):
    run_dir = runs(case)
    losses = [json.loads(line) for line in open(run_dir / "loss.jsonl")]
    assert losses and all(torch.isfinite(torch.tensor(r["loss"])) for r in losses)
    tag = (run_dir / "checkpoints" / "latest").read_text().strip()
    meta = json.load(open(run_dir / "checkpoints" / tag / "meta.json"))
    assert {r["stage"] for r in losses} <= set(meta["trained_stages"])
    assert meta["counters"]["images"] >= 160 and meta["world_size"] == 2
    assert cli(["export", "--run-dir", str(run_dir), "--out", str(tmp_path / "ema.safetensors")]) == 0
    model, schedule = load_pretrained(str(tmp_path / "ema.safetensors"))
    live_weights = load_file(str(run_dir / "probe_ema_weights.safetensors"))
    for name, value in model.state_dict().items():
        assert torch.equal(value, live_weights[name]), name
    # Outputs: exact on the same kernels; a ZeRO-3 process routes F.linear through DeepSpeed's
    # own autograd function (addmm), which may differ from torch's linear in the last bits.
    live = load_file(str(run_dir / "probe_ema_outputs.safetensors"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks ran (OMP_NUM_THREADS=1): CPU kernels' sums depend on it
    try:
        outputs = ema_outputs(model, schedule)
    finally:
        torch.set_num_threads(threads)
    for key, value in outputs.items():
        assert torch.allclose(value, live[key], rtol=1e-5, atol=1e-6), (key, (value - live[key]).abs().max())
        if "zero3" not in case:
            assert torch.equal(value, live[key]), key
    cfg = load_config(str(run_dir / "config.yaml"))
    initial = build_model(cfg, build_schedule(cfg)).state_dict()
    conv_out = f"networks.{cfg.trained_stages()[0] if cfg.model.mode == 'per_stage' else 0}.conv_out.weight"
    assert not torch.equal(initial[conv_out], model.state_dict()[conv_out]), "EMA never moved"
    assert cli(["export", "--run-dir", str(run_dir), "--raw", "--out", str(tmp_path / "raw.safetensors")]) == 0
    raw, live_raw = load_file(str(tmp_path / "raw.safetensors")), load_file(str(run_dir / "probe_raw_weights.safetensors"))
    assert set(live_raw) <= set(raw)
    bf16 = "bf16" in case
    for name, value in live_raw.items():
        exported = raw[name].to(torch.bfloat16).float() if bf16 else raw[name]
        assert torch.equal(exported, value), name
    sidecar = json.load(open(tmp_path / "ema.json"))
    assert sidecar["schedule"]["turning_points"] == [300, 600] and sidecar["model"]["preset"] == "tiny"


@pytest.mark.slow
def test_per_stage_runs_combine_into_one_export(runs, tmp_path):
    a, b = runs("zero2-per_stage-stage0"), runs("zero3-per_stage-stages12")
    out = tmp_path / "combined.safetensors"
    assert cli(["export", "--run-dir", str(a), "--run-dir", str(b), "--out", str(out)]) == 0
    merged = load_file(str(out))
    export([str(a)], str(tmp_path / "a.safetensors"))
    export([str(b)], str(tmp_path / "b.safetensors"))
    only_a, only_b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    for name, value in merged.items():
        source = only_a if name.startswith("networks.0.") else only_b
        assert torch.equal(value, source[name]), name
    # the frozen (untrained) stage networks of a run differ from the other run's trained ones
    assert not torch.equal(only_a["networks.1.conv_in.weight"], only_b["networks.1.conv_in.weight"])
    model, _ = load_pretrained(str(out))
    assert model.config.mode == "per_stage"
    with pytest.raises(ExportError, match="disjoint"):
        export([str(b), str(b)], str(tmp_path / "bad.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_per_stage_step_moves_only_the_drawn_stage(zero_stage, tiny_shards, tmp_path):
    script = str(Path(__file__).with_name("probe_stage_isolation.py"))
    proc = run_checked(torchrun_cmd([script, TINY_CONFIG, str(tmp_path / "run"), "6", f"data.shards={tiny_shards}",
                                     "model.mode=per_stage", f"train.zero_stage={zero_stage}",
                                     "optim.weight_decay=0.01", *COMMON]))
    assert "stage isolation ok" in proc.stdout


@pytest.mark.slow
def test_export_needs_no_deepspeed_pickles(runs, tmp_path):
    """EMA and raw exports read only safetensors and JSON: DeepSpeed's (pickled) shards may go."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(runs("zero1-per_stage"), run_dir)
    tag = (run_dir / "checkpoints" / "latest").read_text().strip()
    for path in (run_dir / "checkpoints" / tag).rglob("*"):
        if path.is_file() and path.suffix in (".pt", ".pth", ".bin"):
            path.unlink()
    for raw in (False, True):
        out = tmp_path / f"export-{raw}.safetensors"
        assert cli(["export", "--run-dir", str(run_dir), "--out", str(out), *(["--raw"] if raw else [])]) == 0
        assert load_pretrained(str(out))[0] is not None
