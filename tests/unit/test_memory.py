"""Memory model of OUR network (train/memory.py, memprobe.py): saved bytes against an independent
count, fake == real tensors, linear in the batch, checkpointing, ZeRO state arithmetic, the fit."""
import json
from pathlib import Path

import pytest
import torch

from dvdp_hr.train import memory
from dvdp_hr.train.config import load_config
from dvdp_hr.train.memory import GIB, Linear, state_bytes
from dvdp_hr.train.memprobe import ProbeModel, storage_key
from dvdp_hr.train.plan import format_plan
from dvdp_hr.train.validate import build_schedule

TINY = str(Path(__file__).parents[2] / "configs" / "tiny_cpu.yaml")


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DVDP_HR_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def tiny(*overrides):
    cfg = load_config(TINY, list(overrides))
    return cfg, build_schedule(cfg)


def graph_saved_bytes(loss: torch.Tensor, skip: set[int]) -> int:
    """Independent count: walk the autograd graph and read each node's saved tensors (_saved_*)."""
    storages, seen, stack = {}, set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for name in dir(node):
            if name.startswith("_saved_"):
                value = getattr(node, name)
                for tensor in value if isinstance(value, (tuple, list)) else [value]:
                    # 0-dim: a Python number autograd wrapped (x * 4.0); host memory, never given to hooks
                    if isinstance(tensor, torch.Tensor) and tensor.dim() and storage_key(tensor) not in skip:
                        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        stack.extend(fn for fn, _ in node.next_functions)
    return sum(storages.values())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_saved_bytes_equal_an_independent_count_at_two_batch_sizes(precision):
    cfg, schedule = tiny()
    real = ProbeModel(cfg.model, schedule, precision, checkpointing=False, fake=False)
    fake = ProbeModel(cfg.model, schedule, precision, checkpointing=False)
    for batch in (1, 2):
        loss, saved = real.forward_loss(0, batch)
        assert saved == graph_saved_bytes(loss, real.skip) > 0
        assert fake.forward_loss(0, batch)[1] == saved  # fake tensors see what real ones hold


@pytest.mark.parametrize("checkpointing, overrides", [(False, []), (True, []), (False, ["model.channels_last=true"])])
def test_fake_tensors_measure_what_real_tensors_hold(checkpointing, overrides):
    cfg, schedule = tiny(*overrides)
    real = ProbeModel(cfg.model, schedule, "bf16", checkpointing, fake=False)
    fake = ProbeModel(cfg.model, schedule, "bf16", checkpointing)
    assert fake.train_step(1, 2) == real.train_step(1, 2)
    assert fake.sample_step(1, 2) == real.sample_step(1, 2)


def test_linear_in_batch_and_checkpointing_lowers_it():
    cfg, schedule = tiny()
    acts = memory.measure_activations(cfg.model, schedule, "bf16", [0, 1, 2])
    probe = ProbeModel(cfg.model, schedule, "bf16", checkpointing=False)
    for k, stage in enumerate(acts.stages):
        three = probe.train_step(k, 3)
        assert three.saved == stage.saved[False].at(3) and three.peak == stage.train[False].at(3)
        assert stage.saved[True].per_image < stage.saved[False].per_image / 2
        assert stage.train[True].per_image < stage.train[False].per_image
        assert 0 < stage.sample.per_image < stage.train[True].per_image
    assert acts.total_params == acts.trained_params == sum(p.numel() for p in probe.model.parameters())


def test_bf16_activations_are_half_of_fp32():
    cfg, schedule = tiny()
    fp32 = ProbeModel(cfg.model, schedule, "fp32", False).train_step(0, 1).saved
    bf16 = ProbeModel(cfg.model, schedule, "bf16", False).train_step(0, 1).saved
    assert bf16 == pytest.approx(fp32 / 2, rel=0.01)  # fp32 only in norm statistics and the loss


def test_state_bytes_per_zero_stage():
    p, w = 1000, 4
    z1 = state_bytes(p, p, "bf16", 1, w, ema_count=2)
    assert (z1.weights, z1.grads, z1.optimizer, z1.ema) == (2000, 2000, 3000, 2000)
    z2 = state_bytes(p, p, "bf16", 2, w, ema_count=2)
    assert (z2.weights, z2.grads, z2.optimizer) == (2000, 500, 3000)
    z3 = state_bytes(p, p, "fp32", 3, w, ema_count=1, ema_partitioned=False, bucket_elements=10)
    assert (z3.weights, z3.grads, z3.optimizer, z3.ema, z3.buckets) == (1000, 1000, 3000, 4000, 40)
    assert z3.total == 1000 + 1000 + 3000 + 4000 + 40


def test_largest_batch_arithmetic():
    line = Linear.from_batches(15, 20)  # fixed 10, 5 per image
    assert (line.fixed, line.per_image, line.at(4)) == (10, 5, 30)
    assert [line.largest_batch(b) for b in (30, 29.9, 15, 14, 0)] == [4, 3, 1, 0, 0]


def test_cache_is_reused(monkeypatch):
    cfg, schedule = tiny()
    first = memory.cached_activations(cfg.model, schedule, "fp32", [0, 1, 2])
    monkeypatch.setattr(memory, "measure_activations", lambda *a: pytest.fail("measured again"))
    assert memory.cached_activations(cfg.model, schedule, "fp32", [0, 1, 2]) == first
    assert list(memory.cache_dir().glob("activations-*.json"))


def test_plan_has_memory_and_read_amplification_columns():
    cfg, schedule = tiny()
    out = format_plan(cfg, schedule, world_size=2)
    for column in ("act GiB/img", "peak GiB/img", "GiB@micro", "max micro", "max w/ ckpt", "max sample",
                   "shards", "read amp", "world_size=2", "OUR network", "BORROWED"):
        assert column in out, column
    assert "NO" not in out and "Fix:" not in out


def test_plan_flags_a_micro_batch_that_does_not_fit():
    # usable 0.063 GiB, ~8 MB of state: stage 0 (64 px, ~17.7 MB per image in fp32) fits 3 images, not 4
    cfg, schedule = tiny("plan.gpu_memory_gib=0.07", "distributed.reduce_bucket_size=1000")
    fit = memory.memory_plan(cfg, schedule, 1).stages[0]
    assert (fit.micro_batch, fit.max_micro, fit.fits) == (4, 3, False) and fit.max_micro_checkpointed >= 4
    assert fit.train_total > 0.063 * GIB
    out = format_plan(cfg, schedule, 1)
    assert "Stage 0 (64 px): micro_batch 4 needs" in out
    assert "lower train.micro_batch[0] to 3" in out and "model.grad_checkpointing[0]: true" in out
    on = memory.memory_plan(load_config(TINY, ["plan.gpu_memory_gib=0.07", "distributed.reduce_bucket_size=1000",
                                               "model.grad_checkpointing=[true, false, false]"]), schedule, 1)
    assert on.stages[0].fits and on.stages[0].checkpointing


def test_read_amplification_from_a_manifest_and_from_the_plan(tmp_path):
    sets = {str(r): {"shards": [{"name": f"{i}.tar"} for i in range(n)]} for r, n in ((64, 8), (32, 8), (16, 1))}
    (tmp_path / "manifest.json").write_text(json.dumps({"sets": sets, "resolutions": [64, 32, 16]}))
    cfg, schedule = tiny(f"data.shards={tmp_path}", "data.num_workers=2")
    rows = [line.split() for line in format_plan(cfg, schedule, 2).splitlines()]
    table = {row[1]: row for row in rows if len(row) == 14 and row[0].isdigit()}
    assert table["64"][10:13] == ["8", "4", "1.00"]
    assert table["16"][10:13] == ["1", "4", "refused"]
    unknown, _ = tiny()
    assert "-" == next(r for r in (line.split() for line in format_plan(unknown, schedule, 1).splitlines())
                       if len(r) == 14 and r[1] == "64")[12]


def test_gpu_measured_memory_overrides_the_fit_check():
    cfg, schedule = tiny("plan.memory_gib={64: 79}")
    fit = memory.memory_plan(cfg, schedule, 1).stages[0]
    assert fit.measured_gib == 79 and not fit.fits  # 79 GiB > 72 usable of 80
    assert "needs 79 GiB (plan.memory_gib)" in format_plan(cfg, schedule, 1)


def test_a_checkpointing_list_of_the_wrong_length_is_a_config_error():
    with pytest.raises(memory.ConfigError, match="has 2 entries but the schedule has 3 stages"):
        tiny("model.grad_checkpointing=[true, false]")  # refused when the config loads
