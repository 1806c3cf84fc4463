"""Export format without DeepSpeed: EMA checkpoint -> safetensors + metadata -> load_pretrained."""
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

import dvdp_hr
from dvdp_hr.distributed import checkpoint as ckpt
from dvdp_hr.export import ExportError, export, read_export_info
from dvdp_hr.train.config import load_config
from dvdp_hr.train.ema import EMA
from dvdp_hr.distributed.fragment import ModuleMasters
from dvdp_hr.train.setup import build_model, build_schedule

TINY = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny_cpu.yaml")


def fake_run(run_dir, overrides=(), seed=0, images=64):
    """A run folder with one complete checkpoint holding EMA weights (what the trainer writes)."""
    cfg = load_config(TINY, [f"train.seed={seed}", *overrides])
    model = build_model(cfg, build_schedule(cfg))
    ema = EMA(model, cfg.ema.decays).attach(ModuleMasters(build_model(cfg, build_schedule(cfg))))
    os.makedirs(ckpt.checkpoints_dir(str(run_dir)), exist_ok=True)
    meta = {"counters": {"images": images}, "world_size": 1, "config": cfg.to_dict(),
            "ema_decays": ema.labels, "trained_stages": cfg.trained_stages()}
    ckpt.save_checkpoint(str(run_dir), ckpt.make_tag(images), lambda root, tag: ema.save(os.path.join(root, tag)),
                         meta, keep_last=2)
    return ema


def _probe(model, schedule):
    g = torch.Generator().manual_seed(0)
    return [model(torch.randn(2, 3, schedule.stage_resolution(k), schedule.stage_resolution(k), generator=g),
                  torch.tensor([schedule.stage_bounds(k)[1]] * 2)) for k in range(schedule.num_stages)]


def test_export_reloads_to_the_ema_model(tmp_path):
    ema = fake_run(tmp_path / "run")
    out = tmp_path / "model.safetensors"
    info = export([str(tmp_path / "run")], str(out))
    assert info["sources"][0]["weights"] == "ema-0.99" and read_export_info(str(out)) == info
    assert json.load(open(tmp_path / "model.json")) == info  # sidecar
    model, schedule = dvdp_hr.load_pretrained(str(out))
    assert schedule.turning_points == [300, 600] and schedule.resolution == 64
    with torch.no_grad():
        for a, b in zip(_probe(model, schedule), _probe(ema.materialize(0.99), schedule)):
            assert torch.equal(a, b)
    export([str(tmp_path / "run")], str(tmp_path / "slow.safetensors"), decay=0.999)
    with pytest.raises(ExportError, match="keeps the EMAs"):
        export([str(tmp_path / "run")], str(tmp_path / "x.safetensors"), decay=0.5)


def test_a_pickle_is_rejected_without_being_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"weights": Evil()}))
    with pytest.raises(ExportError, match="not a dvdp_hr export"):
        dvdp_hr.load_pretrained(str(path))
    torch.save({"w": torch.zeros(2)}, tmp_path / "torch.pt")
    with pytest.raises(ExportError, match="not a safetensors file"):
        dvdp_hr.load_pretrained(str(tmp_path / "torch.pt"))
    assert not marker.exists()


def test_a_foreign_safetensors_file_is_rejected(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ExportError, match="not a dvdp_hr export"):
        dvdp_hr.load_pretrained(str(tmp_path / "other.safetensors"))


def test_per_stage_runs_combine_only_when_compatible_and_disjoint(tmp_path):
    per_stage = ["model.mode=per_stage"]
    a = fake_run(tmp_path / "a", [*per_stage, "train.stages=[0]"], seed=1)
    b = fake_run(tmp_path / "b", [*per_stage, "train.stages=[1, 2]"], seed=2)
    info = export([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "ab.safetensors"))
    assert [s["stages"] for s in info["sources"]] == [[0], [1, 2]]
    model, _ = dvdp_hr.load_pretrained(str(tmp_path / "ab.safetensors"))
    merged = model.state_dict()
    for name, value in merged.items():
        source = a if name.startswith("networks.0.") else b
        assert torch.equal(value, source.full_state(0.99)[name]), name
    with pytest.raises(ExportError, match="disjoint"):
        export([str(tmp_path / "a"), str(tmp_path / "a")], str(tmp_path / "x.safetensors"))
    fake_run(tmp_path / "c", [*per_stage, "train.stages=[1]"])
    with pytest.raises(ExportError, match=r"stage\(s\) \[2\]"):
        export([str(tmp_path / "a"), str(tmp_path / "c")], str(tmp_path / "x.safetensors"))
    fake_run(tmp_path / "d", [*per_stage, "train.stages=[1, 2]", "schedule.turning_points=[200, 600]"])
    with pytest.raises(ExportError, match="different schedule"):
        export([str(tmp_path / "a"), str(tmp_path / "d")], str(tmp_path / "x.safetensors"))
    fake_run(tmp_path / "e")
    with pytest.raises(ExportError, match="different model"):
        export([str(tmp_path / "a"), str(tmp_path / "e")], str(tmp_path / "x.safetensors"))


def test_importing_the_package_does_not_import_deepspeed():
    import subprocess
    import sys

    code = "import sys, dvdp_hr, dvdp_hr.export, dvdp_hr.cli; print('deepspeed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
