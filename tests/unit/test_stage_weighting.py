"""Plan options of issue 11: stage weighting policies, the plan's per-stage shares and the new
config keys (dvdp-math.md s12)."""
import pytest

from dvdp_hr.train.config import ConfigError, load_config
from dvdp_hr.train.plan import build_plan, stage_weights
from dvdp_hr.train.stage_shares import policy_weights, step_cost
from dvdp_hr.train.validate import build_schedule

TINY, FFHQ = "configs/tiny_cpu.yaml", "configs/ffhq1024.yaml"


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch, request):
    monkeypatch.chdir(request.config.rootpath)


def weights(path, *overrides):
    cfg = load_config(path, list(overrides))
    return cfg, build_schedule(cfg), stage_weights(cfg, build_schedule(cfg))


def test_timestep_share_is_the_old_default():
    _, _, w = weights(TINY)
    assert w == pytest.approx({0: 0.3, 1: 0.3, 2: 0.4})


def test_uniform_compute_and_explicit_weights():
    assert weights(TINY, "train.stage_weighting=uniform")[2] == pytest.approx({0: 1 / 3, 1: 1 / 3, 2: 1 / 3})
    cfg, schedule, w = weights(TINY, "train.stage_weighting=compute")
    costs = [w[k] * step_cost(cfg, schedule, k) for k in range(3)]
    assert costs == pytest.approx([costs[0]] * 3)  # the same training compute per stage
    explicit = weights(TINY, "train.stage_weighting=compute", "train.stage_weights=[1, 1, 2]")[2]
    assert explicit == pytest.approx({0: 0.25, 1: 0.25, 2: 0.5})  # explicit weights win


def test_logsnr_span_is_the_same_on_every_schedule():
    """Stage shares follow the log-SNR each stage covers, fixed by the band rule: re-parameterising
    t (plain vs interpolated cosine) moves the timestep shares but not these."""
    a = weights(FFHQ, "schedule.beta_schedule=cosine")[2]
    b = weights(FFHQ)[2]
    assert list(a.values()) == pytest.approx(list(b.values()), abs=0.005)
    assert [round(v, 2) for v in b.values()] == [0.30, 0.10, 0.10, 0.10, 0.40]


def test_plan_rows_carry_logsnr_ranges_and_compute_shares():
    cfg, schedule, _ = weights(FFHQ)
    plan = build_plan(cfg, schedule, world_size=64)
    assert [r.logsnr_range for r in plan] == ["[2.1,10.1]", "[1.6,3.5]", "[0.9,2.9]", "[0.4,2.3]", "[-19.8,1.7]"]
    assert sum(r.compute_share for r in plan) == pytest.approx(1.0)
    assert [r.t_range for r in plan][-1] == (584, 1000) and plan[-1].timestep_share == pytest.approx(0.416)


@pytest.mark.parametrize("override, message", [
    ("train.loss_weighting=snr", "train.loss_weighting='snr' is not one of"),
    ("train.stage_weighting=steps", "train.stage_weighting='steps' is not one of"),
    ("schedule.sampling_grid=karras", "schedule.sampling_grid='karras' is not one of"),
    ("train.sigma_data=0", "train.sigma_data must be > 0"),
    ("schedule.shift_base=32", "schedule.shift_base=32 only moves the shifted schedules"),
    ("schedule.beta_schedule=sigmoid", "beta_schedule must be one of"),
])
def test_new_keys_are_validated_with_named_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, [override])


def test_policy_weights_rejects_unknown_policy():
    cfg = load_config(TINY)
    cfg.train.stage_weighting = "steps"
    with pytest.raises(ValueError, match="stage_weighting"):
        policy_weights(cfg, build_schedule(cfg))


def test_fixed_resolution_baseline_shares_network_and_noise_with_the_real_run():
    dvdp, fixed = load_config(FFHQ), load_config("configs/ffhq1024_fixed.yaml")
    s_dvdp, s_fixed = build_schedule(dvdp), build_schedule(fixed)
    assert s_fixed.num_stages == 1 and s_fixed.resolution == 1024
    assert (s_fixed.abar - s_dvdp.abar).abs().max() < 1e-15  # the same abar_t
    same = lambda m: {k: v for k, v in m.items() if k != "grad_checkpointing"}
    assert same(fixed.to_dict()["model"]) == same(dvdp.to_dict()["model"])
    per_step = lambda cfg: cfg.train.micro_batch[0] * cfg.train.grad_accum[0]
    assert per_step(fixed) == per_step(dvdp)  # the 1024 stage's batch
