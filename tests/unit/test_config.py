"""Config loading: presets, dotted overrides, key-naming errors, DeepSpeed JSON, plan, dry run."""
import pytest

from dvdp_hr.cli import main as cli
from dvdp_hr.train.config import ConfigError, deepspeed_config, load_config
from dvdp_hr.train.lr import learning_rate
from dvdp_hr.train.plan import stage_for_step, stage_weights
from dvdp_hr.train.validate import build_schedule, check_world_size

TINY = "configs/tiny_cpu.yaml"


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch, request):
    monkeypatch.chdir(request.config.rootpath)


def test_overrides_are_yaml_parsed_and_nested():
    cfg = load_config(TINY, ["train.zero_stage=3", "train.stages=[1, 2]", "optim.lr=3e-4", "model.mode=per_stage"])
    assert cfg.train.zero_stage == 3 and cfg.train.stages == [1, 2] and cfg.optim.lr == 3e-4
    assert cfg.trained_stages() == [1, 2] and cfg.model.mode == "per_stage"


@pytest.mark.parametrize("override, key", [
    ("train.zero_stag=3", "train.zero_stag"),  # typo: suggestion
    ("trian.seed=1", "trian"),
    ("model.presett=tiny", "model.presett"),
])
def test_unknown_keys_are_named_with_a_suggestion(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'.*Did you mean"):
        load_config(TINY, [override])


def test_an_empty_section_is_named(tmp_path):
    (tmp_path / "empty.yaml").write_text("schedule:\n  resolution: 64\nema:\n")
    with pytest.raises(ConfigError, match="ema must be a mapping"):
        load_config(str(tmp_path / "empty.yaml"))


def test_unknown_key_in_a_yaml_file_is_named(tmp_path):
    (tmp_path / "bad.yaml").write_text("schedule:\n  resolution: 64\n  turnings: [1]\n")
    with pytest.raises(ConfigError, match="'schedule.turnings'.*turning_points"):
        load_config(str(tmp_path / "bad.yaml"))


@pytest.mark.parametrize("override, message", [
    ("train.micro_batch=[4, 8]", "train.micro_batch needs one entry per stage"),
    ("schedule.turning_points=[300, 1200]", "schedule: turning_points must be strictly increasing"),
    ("schedule.turning_points=[300]", "schedule: turning_points needs one entry per stage boundary"),
    ("train.zero_stage=4", "train.zero_stage=4 is not one of"),
    ("train.precision=fp16", "train.precision='fp16'"),
    ("train.stages=[0, 3]", "train.stages must be distinct stage indices"),
    ("optim.grad_clip=0", "optim.grad_clip must be > 0"),
    ("ema.decays=[1.5]", "ema.decays"),
    ("model.mode=both", "model: model.mode='both' is invalid"),
    ("train.stage_weights=[0, 0, 0]", "train.stage_weights"),
    ("ema.decays=0.999", "ema.decays must be list, got 0.999"),
    ("ema.decays=[0.99, 0.99]", "ema.decays must be distinct"),
    ("checkpoint.keep_last=1.5", "checkpoint.keep_last must be int, got 1.5"),
    ("model.dropout=high", "model.dropout must be float, got 'high'"),
    ("data.num_workers=-1", "data.num_workers must be >= 0"),
    ("data.shuffle_buffer=0", "data.shuffle_buffer must be >= 1"),
    ("train.seed=-3", "train.seed must be >= 0"),
    ("optim.betas=[0.9]", "optim.betas must be two numbers"),
    ("logging.sample_steps=2", "logging.sample_steps must be >= the number of stages"),
])
def test_inconsistent_values_are_rejected_up_front(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(TINY, [override])


def test_global_batch_arithmetic_names_the_keys():
    cfg = load_config(TINY, ["train.global_batch=[16, 16, 32]"])
    check_world_size(cfg, 2)  # 4*2*2, 8*1*2, 16*1*2
    with pytest.raises(ConfigError, match=r"train.global_batch\[0\]=16 .*world_size=4"):
        check_world_size(cfg, 4)


def test_shards_without_the_stage_resolution_are_rejected(tmp_path):
    from dvdp_hr.train.validate import check_shards

    cfg = load_config(TINY, [f"data.shards={tmp_path}"])
    with pytest.raises(ConfigError, match="data.shards"):
        check_shards(cfg, build_schedule(cfg))


def test_damaged_shard_set_is_rejected_at_start_up_naming_shards_and_fix(tmp_path, tiny_shards):
    import shutil

    from dvdp_hr.train.validate import check_shards

    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards)
    cfg = load_config(TINY, [f"data.shards={shards}", "train.stages=[1, 2]"])
    check_shards(cfg, build_schedule(cfg))
    (shards / "16" / "shard-000003.tar").unlink()
    truncated = shards / "32" / "shard-000001.tar"
    truncated.write_bytes(truncated.read_bytes()[:1000])
    (shards / "64" / "shard-000000.tar").unlink()  # stage 0 (64 px) is not trained: not checked
    with pytest.raises(ConfigError) as err:
        check_shards(cfg, build_schedule(cfg))
    message = str(err.value)
    assert "2 damaged shard(s)" in message and "16/shard-000003.tar: missing" in message
    assert "32/shard-000001.tar: 1000 bytes" in message and "64/" not in message.split("Run")[0]
    assert f"inspect_shards.py {shards}" in message and "--resume" in message


@pytest.mark.parametrize("values, message", [
    ("[0.01, 0.02]", r"sigma_perp2 needs 4 entries, one per stage boundary \(1024->512, 512->256, 256->128, 128->64\)"),
    ("[0.01, 0.02, 0.1, -1]", "sigma_perp2 entries must be positive"),
])
def test_band_stats_errors_name_sigma_perp2_and_the_boundaries(values, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config("configs/ffhq1024.yaml", [f"schedule.band_stats.sigma_perp2={values}"])
    assert "band_variances" not in str(err.value)


def test_cli_reports_config_errors_with_exit_code_2(capsys):
    assert cli(["train", "--config", TINY, "--dry-run", "train.zero_stag=3"]) == 2
    assert "train.zero_stag" in capsys.readouterr().err


def test_deepspeed_json_is_generated_from_the_config():
    ds = deepspeed_config(load_config(TINY, ["train.zero_stage=3", "train.precision=bf16", "optim.grad_clip=0.5"]))
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"] is True
    assert ds["gradient_clipping"] == 0.5 and ds["gradient_accumulation_steps"] == 1
    assert ds["optimizer"]["params"]["torch_adam"] is True and ds["train_micro_batch_size_per_gpu"] == 4


def test_stage_choice_is_a_pure_function_of_seed_and_step():
    cfg = load_config(TINY)
    weights = stage_weights(cfg, build_schedule(cfg))
    assert weights == pytest.approx({0: 0.3, 1: 0.3, 2: 0.4})
    first = [stage_for_step(0, n, weights) for n in range(3000)]
    assert first == [stage_for_step(0, n, weights) for n in range(3000)]
    assert first != [stage_for_step(1, n, weights) for n in range(3000)]
    for k, w in weights.items():
        assert abs(first.count(k) / 3000 - w) < 0.04
    subset = stage_weights(load_config(TINY, ["train.stages=[1, 2]"]), build_schedule(cfg))
    assert set(stage_for_step(0, n, subset) for n in range(200)) == {1, 2}


def test_learning_rate_warmup_then_cosine_decay():
    optim = load_config(TINY).optim  # lr 2e-3, warmup 256 images, cosine to 10%
    assert learning_rate(0, optim, 10_000) == pytest.approx(2e-3 / 256)
    assert learning_rate(255, optim, 10_000) == pytest.approx(2e-3)
    assert learning_rate(10_000, optim, 10_000) == pytest.approx(2e-4)
    mid = learning_rate(256 + (10_000 - 256) // 2, optim, 10_000)
    assert mid == pytest.approx(1.1e-3, rel=1e-3)


def test_dry_run_prints_resolved_config_and_plan(capsys):
    assert cli(["train", "--config", TINY, "--dry-run", "train.zero_stage=3"]) == 0
    out = capsys.readouterr().out
    assert "zero_stage: 3" in out and "Per-stage plan" in out and "(600,1000]" in out


def test_ffhq1024_dry_run_shows_band_stats_turning_points_and_gpu_hours(capsys):
    assert cli(["train", "--config", "configs/ffhq1024.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "turning_points:\n  - 139" in out.replace("  turning_points:", "turning_points:").replace("\n  -", "\n  -")
    assert "Expected GPU-hours per million training images" in out and "docs/gpu-facts.md" in out
    assert "sigma_perp^2=[0.0035, 0.0251, 0.192, 1.317]" in out
    cfg = load_config("configs/ffhq1024.yaml")
    # band rule on the interpolated schedule (dvdp-math.md s9); [204, 468, 759, 904] on plain cosine
    assert cfg.schedule.turning_points == [139, 261, 421, 584] and build_schedule(cfg).num_stages == 5
