"""EMA: exact update rule, distinct file names per decay (also through export), fp32 CPU files."""
import os

import pytest
import torch
from safetensors.torch import load_file

from dvdp_hr.distributed import checkpoint as ckpt
from dvdp_hr.export import export
from dvdp_hr.train.config import load_config
from dvdp_hr.train.ema import EMA, ema_filename
from dvdp_hr.train.setup import build_model, build_schedule

TINY = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny_cpu.yaml")
CLOSE_DECAYS = [0.9999999, 0.99999995]  # the same under f"{d:g}" (both "1")


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def test_filenames_are_exact_and_distinct():
    names = [ema_filename(d) for d in [*CLOSE_DECAYS, 0.99, 0.999]]
    assert len(set(names)) == len(names)
    assert ema_filename(0.99) == "ema-0.99.safetensors"
    for d in CLOSE_DECAYS:  # the name gives the decay back exactly
        assert float(ema_filename(d)[len("ema-"):-len(".safetensors")]) == d


def test_duplicate_decays_are_rejected():
    with pytest.raises(ValueError, match=r"ema\.decays has duplicates \[0\.99\]"):
        EMA(_net(), [0.99, 0.999, 0.99])


def test_update_averages_the_given_master_values_and_copies_buffers():
    ema = EMA(_net(0), [0.5, 0.9])
    start = {n: p.clone() for n, p in _net(0).named_parameters()}
    live = _net(1)
    live[1].running_mean.fill_(3.0)
    ema.update(live.named_parameters(), live.buffers())
    for d, model in ema.models.items():
        for name, value in model.named_parameters():
            expected = torch.lerp(start[name], dict(live.named_parameters())[name].detach(), 1 - d)
            assert torch.equal(value, expected), (d, name)
        assert torch.equal(model[1].running_mean, torch.full((4,), 3.0))
    # parameters the engine does not yield (frozen ones) keep their value
    ema.update([("0.bias", torch.zeros(4))], live.buffers())
    assert torch.equal(ema.models[0.5][0].weight, torch.lerp(start["0.weight"], live[0].weight.detach(), 0.5))


def test_save_writes_fp32_cpu_tensors_and_load_round_trips(tmp_path):
    ema = EMA(_net(0).to(torch.bfloat16), [0.9])
    ema.save(str(tmp_path))
    saved = load_file(str(tmp_path / ema_filename(0.9)))
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in saved.values())
    other = EMA(_net(5), [0.9])
    other.load(str(tmp_path))
    for name, value in other.models[0.9].state_dict().items():
        assert value.device == other.device and torch.equal(value, saved[name]), name
    with pytest.raises(FileNotFoundError, match="ema.decays must match"):
        EMA(_net(), [0.5]).load(str(tmp_path))


def test_close_decays_export_their_own_weights(tmp_path):
    cfg = load_config(TINY, [f"ema.decays={CLOSE_DECAYS}"])
    model = build_model(cfg, build_schedule(cfg))
    ema = EMA(model, cfg.ema.decays)
    with torch.no_grad():  # make the two averages differ
        ema.models[CLOSE_DECAYS[1]].networks[0].conv_out.weight.add_(1.0)
    run = str(tmp_path / "run")
    os.makedirs(ckpt.checkpoints_dir(run))
    meta = {"counters": {"images": 8}, "world_size": 1, "config": cfg.to_dict(), "ema_decays": ema.decays,
            "trained_stages": cfg.trained_stages()}
    ckpt.save_checkpoint(run, ckpt.make_tag(8), lambda root, tag: ema.save(os.path.join(root, tag)), meta, 2)
    for d in CLOSE_DECAYS:
        info = export([run], str(tmp_path / f"{d!r}.safetensors"), decay=d)
        assert info["sources"][0]["weights"] == f"ema-{d!r}"
        exported = load_file(str(tmp_path / f"{d!r}.safetensors"))
        for name, value in ema.models[d].state_dict().items():
            assert torch.equal(exported[name], value), (d, name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_copies_live_on_the_device_and_files_stay_on_the_cpu(tmp_path):
    ema = EMA(_net(0), [0.9], device="cuda")
    live = _net(1).cuda()
    ema.update(live.named_parameters(), live.buffers())
    assert all(p.device.type == "cuda" for p in ema.models[0.9].parameters())
    ema.save(str(tmp_path))
    assert all(v.device.type == "cpu" for v in load_file(str(tmp_path / ema_filename(0.9))).values())
    ema.load(str(tmp_path))
    assert all(p.device.type == "cuda" for p in ema.models[0.9].state_dict().values())
