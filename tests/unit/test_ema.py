"""EMA: exact update rule on the masters, half-lives in images, distinct file names per EMA (also\nthrough export), fp32 CPU files."""
import os

import pytest
import torch
from safetensors.torch import load_file

from dvdp_hr.distributed import checkpoint as ckpt
from dvdp_hr.distributed.fragment import ModuleMasters
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


def _attached(seed: int, labels, **kw):
    """An EMA of net(seed) whose masters are the parameters of a live net(seed) (one process)."""
    live = _net(seed)
    ema = EMA(_net(seed), labels, **kw).attach(ModuleMasters(live))
    return ema, live


def test_update_averages_the_master_values_and_keeps_buffers():
    ema, live = _attached(0, [0.5, 0.9])
    start = {n: p.clone() for n, p in _net(0).named_parameters()}
    with torch.no_grad():
        for p, q in zip(live.parameters(), _net(1).parameters()):
            p.copy_(q)  # the optimizer steps the masters in place
    live[1].running_mean.fill_(3.0)
    ema.update(images=8)
    for d in (0.5, 0.9):
        state = ema.full_state(d)
        for name, value in live.named_parameters():
            assert torch.equal(state[name], torch.lerp(start[name], value.detach(), 1 - d)), (d, name)
        assert torch.equal(state["1.running_mean"], torch.full((4,), 3.0))


def test_frozen_parameters_keep_their_initial_value():
    net = _net(0)
    net[0].bias.requires_grad_(False)
    live = _net(0)
    live[0].bias.requires_grad_(False)
    ema = EMA(net, [0.5]).attach(ModuleMasters(live))
    with torch.no_grad():
        live[0].bias.add_(1.0)
        live[0].weight.add_(1.0)
    ema.update(images=1)
    state = ema.full_state(0.5)
    assert torch.equal(state["0.bias"], _net(0)[0].bias.detach())
    torch.testing.assert_close(state["0.weight"], _net(0)[0].weight.detach() + 0.5, rtol=0, atol=1e-7)


def test_halflife_in_images_sets_the_decay_per_step():
    ema, live = _attached(0, None, halflife_images=[1000])
    assert ema.labels == ["hl1000"] and ema_filename("hl1000") == "ema-hl1000.safetensors"
    assert ema.decay("hl1000", 1000) == 0.5 and ema.decay("hl1000", 0) == 1.0
    start = _net(0)[0].weight.detach().clone()
    with torch.no_grad():
        live[0].weight.add_(1.0)
    ema.update(images=500)
    ema.update(images=500)  # two half-half-lives: half-way towards the (constant) target
    got = ema.full_state("hl1000")["0.weight"]
    torch.testing.assert_close(got, start + 0.5, rtol=0, atol=1e-6)


def test_save_writes_fp32_cpu_tensors_and_load_round_trips(tmp_path):
    ema, live = _attached(0, [0.9])
    with torch.no_grad():
        live[0].weight.mul_(2.0)
    ema.update(images=1)
    ema.save(str(tmp_path))
    saved = load_file(str(tmp_path / ema_filename(0.9)))
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in saved.values())
    other, _ = _attached(5, [0.9])
    other.load(str(tmp_path))
    for name, value in other.full_state(0.9).items():
        assert torch.equal(value, saved[name]), name
    model = other.materialize()
    assert not model.training and all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    with pytest.raises(FileNotFoundError, match="ema.decays / ema.halflife_images must match"):
        _attached(0, [0.5])[0].load(str(tmp_path))


def test_close_decays_export_their_own_weights(tmp_path):
    cfg = load_config(TINY, [f"ema.decays={CLOSE_DECAYS}"])
    model = build_model(cfg, build_schedule(cfg))
    live = build_model(cfg, build_schedule(cfg))
    ema = EMA(model, cfg.ema.decays).attach(ModuleMasters(live))
    with torch.no_grad():  # make the two averages differ
        live.networks[0].conv_out.weight.add_(1.0)
    ema.update(images=1)
    run = str(tmp_path / "run")
    os.makedirs(ckpt.checkpoints_dir(run))
    meta = {"counters": {"images": 8}, "world_size": 1, "config": cfg.to_dict(), "ema_decays": ema.labels,
            "trained_stages": cfg.trained_stages()}
    ckpt.save_checkpoint(run, ckpt.make_tag(8), lambda root, tag: ema.save(os.path.join(root, tag)), meta, 2)
    for d in CLOSE_DECAYS:
        info = export([run], str(tmp_path / f"{d!r}.safetensors"), decay=d)
        assert info["sources"][0]["weights"] == f"ema-{d!r}"
        exported = load_file(str(tmp_path / f"{d!r}.safetensors"))
        for name, value in ema.full_state(d).items():
            assert torch.equal(exported[name], value), (d, name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_shadows_live_on_the_device_and_files_stay_on_the_cpu(tmp_path):
    ema = EMA(_net(0), [0.9]).attach(ModuleMasters(_net(1).cuda()))
    ema.update(images=1)
    assert all(t.device.type == "cuda" for t in ema.shadows[0.9])
    ema.save(str(tmp_path))
    assert all(v.device.type == "cpu" for v in load_file(str(tmp_path / ema_filename(0.9))).values())
    ema.load(str(tmp_path))
    assert all(t.device.type == "cuda" for t in ema.shadows[0.9])
