"""Launch environment: Slurm detected per job step, rendezvous ports, device index, status.json
per attempt, stop-signal chaining (no processes launched; the real Slurm runs are tests/slurm/)."""
import json
import os
import signal
import subprocess
import sys

import pytest

from dvdp_hr.distributed import env as dist_env
from dvdp_hr.distributed import signals, status
from dvdp_hr.distributed.signals import StopFlag

LAUNCH_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "DVDP_LOCAL_RANK")

# the batch shell of `sbatch --nodes=8 --ntasks-per-node=8` (measured: no SLURM_STEP_* there)
BATCH = {"SLURM_JOB_ID": "1234", "SLURM_PROCID": "0", "SLURM_NTASKS": "64", "SLURM_LOCALID": "0",
         "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "gpu[017-024]"}
# task 13 of the srun step inside it
STEP = {**BATCH, "SLURM_PROCID": "13", "SLURM_LOCALID": "5", "SLURM_NODEID": "1", "SLURM_STEP_ID": "0",
        "SLURM_STEP_NUM_TASKS": "64", "SLURM_STEP_NODELIST": "gpu[017-024]"}


@pytest.fixture
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith(("SLURM_", "SUBMITIT_")):
            monkeypatch.delenv(key)
    for key in LAUNCH_KEYS:  # set, then deleted: tracked even when absent, so what setup_env writes is undone
        monkeypatch.setenv(key, "unset")
        monkeypatch.delenv(key)
    return monkeypatch


def test_the_batch_shell_is_not_a_rank_of_the_job():
    assert not dist_env.in_slurm_step(BATCH)
    assert dist_env.detect(BATCH) == dist_env.DistEnv(0, 1, 0)


def test_a_job_step_task_takes_its_ranks_from_the_step():
    assert dist_env.in_slurm_step(STEP)
    assert dist_env.detect(STEP) == dist_env.DistEnv(13, 64, 5)
    # a step smaller than the job: the step's task count, not the job's
    assert dist_env.detect({**STEP, "SLURM_STEP_NUM_TASKS": "16", "SLURM_PROCID": "3"}).world_size == 16
    # a launcher's own variables win (torchrun inside an allocation)
    assert dist_env.detect({**STEP, "RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "2"}) == dist_env.DistEnv(2, 4, 2)


def test_setup_env_in_a_step_fills_the_rendezvous(clean_env):
    for key, value in STEP.items():
        clean_env.setenv(key, value)
    found = dist_env.setup_env()
    assert found == dist_env.DistEnv(13, 64, 5)
    assert os.environ["RANK"] == "13" and os.environ["WORLD_SIZE"] == "64"
    assert os.environ["MASTER_ADDR"] == "gpu017"
    assert os.environ["MASTER_PORT"] == str(dist_env.job_port(1234)) and int(os.environ["MASTER_PORT"]) < 32768
    assert os.environ["LOCAL_RANK"] == "5"  # no CUDA here: the node-local rank


def test_setup_env_in_the_batch_shell_is_one_process_and_says_so(clean_env, capsys):
    for key, value in BATCH.items():
        clean_env.setenv(key, value)
    assert dist_env.setup_env() == dist_env.DistEnv(0, 1, 0)
    assert os.environ["WORLD_SIZE"] == "1"
    assert "not in a Slurm job step" in capsys.readouterr().err


def test_reserved_ports_win_over_the_job_port(clean_env):
    for key, value in {**STEP, "SLURM_STEP_RESV_PORTS": "12001-12002"}.items():
        clean_env.setenv(key, value)
    dist_env.setup_env()
    assert os.environ["MASTER_PORT"] == "12001"
    assert dist_env.reserved_port({"SLURM_STEP_RESV_PORTS": "12005,12009"}) == 12005
    assert dist_env.reserved_port({}) is None


def test_job_ports_stay_out_of_the_ephemeral_range():
    default = (32768, 60999)
    ports = {dist_env.job_port(j, default) for j in range(0, 400000, 7)}
    assert min(ports) >= 10000 and max(ports) < 30000
    assert dist_env.job_port(1234, default) == 11234
    # a host whose ephemeral range starts low: the widest free window is used instead
    for job in (1, 12345, 99999):
        port = dist_env.job_port(job, (15000, 60999))
        assert 1024 <= port < 15000
        port = dist_env.job_port(job, (1024, 40000))
        assert 40000 < port <= 65535
    with pytest.raises(RuntimeError, match="MASTER_PORT"):
        dist_env.job_port(1, (1024, 65000))


def test_the_ephemeral_range_is_read_from_proc(tmp_path):
    path = tmp_path / "range"
    path.write_text("20000\t50000\n")
    assert dist_env.ephemeral_port_range(str(path)) == (20000, 50000)
    assert dist_env.ephemeral_port_range(str(tmp_path / "missing")) == (32768, 60999)


def test_first_host_of_a_node_list():
    assert dist_env.first_host("gpu[017-024]") == "gpu017"
    assert dist_env.first_host("node[3,5-7],login1") == "node3"
    assert dist_env.first_host("solo") == "solo"


def test_device_index_with_one_or_all_gpus_visible():
    assert dist_env.device_index(5, visible=1) == 0  # --gpus-per-task=1: each task sees its own GPU as 0
    assert dist_env.device_index(5, visible=8) == 5  # all GPUs of the node visible
    assert dist_env.device_index(0, visible=0) == 0  # CPU
    assert dist_env.device_index(9, visible=8) == 1


def test_torch_only_process_group_single_process(clean_env):
    code = ("from dvdp_hr.distributed.env import init_process_group\n"
            "import torch.distributed as dist\n"
            "e = init_process_group(0.5); assert e.world_size == 1 and dist.get_backend() == 'gloo'\n"
            "assert init_process_group(0.5) == e  # an initialised group is reused\n"
            "dist.destroy_process_group(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k not in LAUNCH_KEYS})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_importing_env_and_status_does_not_import_torch():
    code = ("import sys, dvdp_hr.distributed.status, dvdp_hr.distributed.env\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]


# ---- status.json ----
def test_status_records_each_attempt_from_start_to_end(clean_env, tmp_path):
    clean_env.setenv("SLURM_JOB_ID", "77")
    clean_env.setenv("SLURM_RESTART_COUNT", "2")
    with status.Attempt(str(tmp_path), world_size=4) as attempt:
        running = status.read_status(str(tmp_path))
        assert running["state"] == "running" and running["attempt"] == "slurm-77.2"
        assert running["job_id"] == "77" and running["restart_count"] == 2 and running["world_size"] == 4
        status.write_status(str(tmp_path), "requeue", step=9, images=144)  # what the trainer writes
        assert attempt.done(75) == 75
    final = status.read_status(str(tmp_path))
    assert final["state"] == "requeue" and final["images"] == 144 and final["world_size"] == 4
    assert final["started_at"] == running["started_at"] and final["exit_code"] == 75


def test_a_failed_attempt_replaces_the_previous_requeue(clean_env, tmp_path):
    from dvdp_hr.train.confutil import ConfigError

    clean_env.setenv("SLURM_JOB_ID", "78")
    status.write_status(str(tmp_path), "requeue", images=64)
    clean_env.setenv("SLURM_RESTART_COUNT", "1")
    with pytest.raises(ConfigError):
        with status.Attempt(str(tmp_path)):
            raise ConfigError("The latest checkpoint was written by 2 ranks but this run has 4.")
    record = status.read_status(str(tmp_path))
    assert record["state"] == "failed" and record["attempt"] == "slurm-78.1"
    assert record["reason"] == "ConfigError: The latest checkpoint was written by 2 ranks but this run has 4."
    assert "images" not in record  # counters of the previous attempt are not carried over


@pytest.mark.parametrize("code, state, reason", [(0, "finished", None), (75, "requeue", None),
                                                 (1, "failed", "exit code 1")])
def test_exit_codes_map_to_states(clean_env, tmp_path, code, state, reason):
    with status.Attempt(str(tmp_path)) as attempt:
        attempt.done(code)
    record = status.read_status(str(tmp_path))
    assert (record["state"], record["reason"], record["exit_code"]) == (state, reason, code)


def test_only_rank0_writes(clean_env, tmp_path):
    clean_env.setenv("RANK", "1")
    clean_env.setenv("WORLD_SIZE", "2")
    assert status.write_status(str(tmp_path), "running") is None
    assert not (tmp_path / "status.json").exists()


def test_status_cli_for_the_sbatch_script(clean_env, tmp_path):
    run = [sys.executable, "-m", "dvdp_hr.distributed.status"]
    env = {k: v for k, v in os.environ.items()}
    env.update({"SLURM_JOB_ID": "5", "SLURM_PROCID": "0", "SLURM_NTASKS": "8"})  # the batch shell
    subprocess.run([*run, "write", str(tmp_path), "running", "--world-size", "8"], check=True, env=env)
    state = subprocess.run([*run, "state", str(tmp_path)], capture_output=True, text=True, check=True, env=env)
    assert state.stdout.strip() == "running"
    record = json.loads((tmp_path / "status.json").read_text())
    assert record["world_size"] == 8 and record["attempt"] == "slurm-5.0"
    env["SLURM_RESTART_COUNT"] = "1"
    state = subprocess.run([*run, "state", str(tmp_path), "--this-attempt"], capture_output=True, text=True,
                           check=True, env=env)
    assert state.stdout.strip() == "stale"
    empty = subprocess.run([*run, "state", str(tmp_path / "none")], capture_output=True, text=True, check=True)
    assert empty.stdout.strip() == ""


# ---- stop signals and a handler installed before the flag (submitit's) ----
def test_a_previous_handler_is_deferred_until_forwarded():
    calls = []
    before = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        flag = StopFlag().install()
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR2)
        assert flag.requested and calls == []  # not during the step: the collective checkpoint comes first
        flag.uninstall()
        assert signals.deferred() and signals.forward_deferred() == 1
        assert calls == [signal.SIGUSR2] and signals.deferred() == []
        # discarded when the run should not be forwarded (failed, finished)
        flag = StopFlag().install()
        os.kill(os.getpid(), signal.SIGUSR2)
        flag.uninstall()
        signals.discard_deferred()
        assert signals.forward_deferred() == 0 and calls == [signal.SIGUSR2]
        os.kill(os.getpid(), signal.SIGUSR2)  # the previous handler is back in place
        assert calls == [signal.SIGUSR2, signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, before)
        signals.discard_deferred()


def test_default_handlers_are_not_deferred():
    flag = StopFlag().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.signum == signal.SIGTERM and signals.deferred() == []
    finally:
        flag.uninstall()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL



def test_training_leaves_the_process_group_only_after_a_normal_end(monkeypatch):
    """A rank that exits while another still uses gloo can abort ("terminate called without an active
    exception"): train() closes the group on every rank once the (agreed) end is reached, and not
    after an error, where another rank may never reach the barrier."""
    from dvdp_hr.train import loop

    calls = []
    monkeypatch.setattr(loop, "leave_ranks", lambda: calls.append("leave"))

    class Finishing:
        def __init__(self, *args):
            calls.append("init")

        def run(self):
            calls.append("run")
            return loop.REQUEUE_EXIT_CODE

    monkeypatch.setattr(loop, "Trainer", Finishing)
    assert loop.train(None, "run") == loop.REQUEUE_EXIT_CODE and calls == ["init", "run", "leave"]

    class Failing(Finishing):
        def run(self):
            raise RuntimeError("a rank failed")

    calls.clear()
    monkeypatch.setattr(loop, "Trainer", Failing)
    with pytest.raises(RuntimeError):
        loop.train(None, "run")
    assert calls == ["init"]
