"""Per-stage gradient checkpointing: config forms, identical gradients, active only for the chosen stages."""
from pathlib import Path

import pytest
import torch

from dvdp_hr.models import ModelConfig, build_denoiser
from model_fixtures import randomise, three_stage_schedule


@pytest.fixture(scope="module")
def schedule():
    return three_stage_schedule()


def stage_batch(schedule, k, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = schedule.sample_timesteps(k, batch, generator=g)
    size = schedule.stage_resolution(k)
    return torch.randn(batch, 3, size, size, generator=g), t


def saved_tensor_count(net, y, t) -> int:
    count = 0

    def pack(tensor):
        nonlocal count
        count += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        net(y, t)
    return count


def gradients(flags, schedule, k, dropout=0.0):
    torch.manual_seed(0)
    net = randomise(build_denoiser(ModelConfig(grad_checkpointing=flags, dropout=dropout), schedule))
    y, t = stage_batch(schedule, k)
    torch.manual_seed(1)
    net(y, t).square().mean().backward()
    return [p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("flags, expected", [
    (False, (False, False, False)), (True, (True, True, True)), ([True, False, True], (True, False, True))])
def test_flags_per_stage(flags, expected):
    assert ModelConfig(grad_checkpointing=flags).validate().checkpointed_stages(3) == expected


@pytest.mark.parametrize("flags", [[], [1, 0, 0], "yes", [True, "no", False]])
def test_bad_flags_are_named(flags):
    with pytest.raises(ValueError, match="model.grad_checkpointing must be true/false"):
        ModelConfig(grad_checkpointing=flags).validate()


def test_wrong_length_names_the_stage_count(schedule):
    with pytest.raises(ValueError, match="has 2 entries but the schedule has 3 stages"):
        build_denoiser(ModelConfig(grad_checkpointing=[True, False]), schedule)


def test_config_file_accepts_a_list():
    from dvdp_hr.train.config import load_config

    tiny = Path(__file__).parents[2] / "configs" / "tiny_cpu.yaml"
    cfg = load_config(str(tiny), ["model.grad_checkpointing=[true, false, false]"])
    assert cfg.model.grad_checkpointing == [True, False, False]


@pytest.mark.parametrize("dropout", [0.0, 0.3])  # 0.3: recomputation replays the dropout masks
def test_checkpointed_stage_has_identical_gradients(schedule, dropout):
    plain = gradients(False, schedule, 0, dropout)
    checkpointed = gradients([True, False, False], schedule, 0, dropout)
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_checkpointing_only_for_the_chosen_stages(schedule):
    plain = build_denoiser(ModelConfig(), schedule)
    chosen = build_denoiser(ModelConfig(grad_checkpointing=[True, False, True]), schedule)
    for k, checkpointed in enumerate((True, False, True)):
        y, t = stage_batch(schedule, k)
        full, got = saved_tensor_count(plain, y, t), saved_tensor_count(chosen, y, t)
        assert (got < full / 2) if checkpointed else (got == full), (k, got, full)


def test_no_checkpointing_without_grad(schedule):
    net = build_denoiser(ModelConfig(grad_checkpointing=True), schedule)
    y, t = stage_batch(schedule, 0)
    with torch.no_grad():
        assert saved_tensor_count(net, y, t) == 0
