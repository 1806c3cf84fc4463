"""`dvdp-hr submit`: the launch: section, the submitit executor it builds, the requeue decision
(no job is submitted here; tests/slurm/test_submitit.py runs one on a real Slurm)."""
import os
from pathlib import Path

import pytest

from dvdp_hr.cli import build_parser
from dvdp_hr.distributed import status
from dvdp_hr.launch.submit import CliJob, _absolute_paths, launch_config, make_executor, submit
from dvdp_hr.train.confutil import ConfigError
from dvdp_hr.train.launch_config import LaunchConfig

TINY = str(Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml")


def _train_args(*argv):
    return build_parser().parse_args(["train", *argv])


def test_launch_section_from_config_keys_and_launch_flags():
    args = _train_args("--config", TINY, "--run-dir", "r", "--shards", "s", "launch.partition=gpu",
                       "launch.nodes=2", "launch.gpus_per_node=4")
    launch = launch_config(args, ["account=abc", "time_minutes=90"])
    assert (launch.partition, launch.account, launch.nodes, launch.gpus_per_node) == ("gpu", "abc", 2, 4)
    assert launch.time_minutes == 90 and launch.resolved_tasks_per_node() == 4  # one process per GPU
    with pytest.raises(ConfigError, match="Unknown config key 'partiton'. Did you mean 'partition'"):
        launch_config(args, ["partiton=x"])


@pytest.mark.parametrize("override, message", [
    ("signal_delay_s=5", "signal_delay_s=5 must be at least 10"),
    ("tasks_per_node=3", "one process per GPU"),
    ("nodes=0", "launch.nodes must be at least 1"),
])
def test_launch_section_is_validated(override, message):
    cfg = LaunchConfig()
    from dvdp_hr.train.confutil import apply_override, from_dict, to_dict

    tree = to_dict(cfg)
    apply_override(tree, LaunchConfig, override)
    with pytest.raises(ConfigError, match=message):
        from_dict(LaunchConfig, tree).validate()


def test_slurm_executor_script_requeues_and_signals_before_the_limit(tmp_path):
    launch = LaunchConfig(partition="gpu", account="abc", qos="high", constraint="h100", nodes=8,
                          gpus_per_node=8, cpus_per_task=12, time_minutes=2880, signal_delay_s=300,
                          setup=["module load cuda"], additional={"exclusive": True})
    executor = make_executor(launch, str(tmp_path), "slurm", "dvdp-train-x")
    text = executor._executor._make_submission_file_text("python -m submitit.core._submit X", "uid")  # noqa: SLF001
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=abc", "#SBATCH --qos=high",
                 "#SBATCH --constraint=h100", "#SBATCH --nodes=8", "#SBATCH --ntasks-per-node=8",
                 "#SBATCH --gpus-per-node=8", "#SBATCH --cpus-per-task=12", "#SBATCH --time=2880",
                 "#SBATCH --signal=USR2@300", "#SBATCH --requeue", "#SBATCH --exclusive", "module load cuda",
                 "--kill-on-bad-exit=1"):
        assert line in text, line
    assert executor._executor.max_num_timeout == 1000  # noqa: SLF001 - time-outs end most attempts of a long run


def test_local_executor_for_machines_without_slurm(tmp_path):
    executor = make_executor(LaunchConfig(gpus_per_node=0, tasks_per_node=2), str(tmp_path), "local", "x")
    assert executor.cluster == "local" and executor.parameters["tasks_per_node"] == 2
    with pytest.raises(ConfigError, match="needs Slurm"):
        make_executor(LaunchConfig(nodes=2, gpus_per_node=0), str(tmp_path), "local", "x")


def test_commands_that_cannot_be_submitted_or_lack_a_run_dir_are_refused():
    with pytest.raises(ConfigError, match="`dvdp-hr export` cannot be submitted"):
        submit("export", ["--run-dir", "r", "--out", "x"])
    with pytest.raises(ConfigError, match="--run-dir is required"):
        submit("train", ["--config", TINY])
    with pytest.raises(SystemExit):  # the command's own argument errors, before anything is submitted
        submit("train", ["--no-such-flag"])


def test_paths_are_made_absolute_for_requeued_jobs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = _absolute_paths(["--config", "c.yaml", "--run-dir=runs/x", "--shards", "https://h/{res}/s.tar",
                            "--max-images", "10", "optim.lr=1e-4"])
    assert argv == ["--config", str(tmp_path / "c.yaml"), f"--run-dir={tmp_path / 'runs/x'}", "--shards",
                    "https://h/{res}/s.tar", "--max-images", "10", "optim.lr=1e-4"]


def test_checkpoint_requeues_unless_this_attempt_already_ended(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("SLURM_") or k in ("RANK", "WORLD_SIZE")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_JOB_ID", "9")
    job = CliJob("train", ["--run-dir", str(tmp_path)], str(tmp_path))
    assert job.checkpoint().function is job  # no status yet: a signal during start-up
    status.write_status(str(tmp_path), "requeue")
    assert job.checkpoint().function is job
    status.write_status(str(tmp_path), "failed", reason="ConfigError: ...")
    assert job.checkpoint() is None  # submitit then ends the job instead of requeueing it
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # a later attempt: the record is stale
    assert job.checkpoint().function is job
