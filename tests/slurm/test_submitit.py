"""`dvdp-hr submit train` through submitit's Slurm executor on a real Slurm: submitit's own
timeout/preemption signal (SIGUSR2) makes every rank checkpoint first, then submitit requeues the
job, which resumes and ends bitwise equal to the uninterrupted `sbatch` run."""
import re
import sys

import pytest

from slurm_jobs import (TINY_CONFIG, TRAIN_ARGS, assert_same_weights, job_env, run, status, wait_attempts,
                        wait_ended, wait_for_checkpoint)

pytestmark = pytest.mark.slow


def test_submit_train_requeues_through_submitit_after_the_collective_checkpoint(
        slurm, reference_run, tiny_shards, tmp_path, cancel_after):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "dvdp_hr.cli", "submit", "--cluster", "slurm", "--launch", "cpus_per_task=1",
           "--launch", "time_minutes=20", "train", "--config", TINY_CONFIG, "--run-dir", str(run_dir),
           "--shards", str(tiny_shards), *TRAIN_ARGS,
           # the launch: section, given like any other config key
           "launch.gpus_per_node=0", "launch.tasks_per_node=2", "launch.signal_delay_s=60"]
    out = run(cmd, job_env(slurm), timeout=120)
    job = re.search(r"submitted job (\d+) \(slurm, 1 node\(s\) x 2 task\(s\)\)", out).group(1)
    cancel_after.append(job)
    assert f"{run_dir}/submitit/{job}_0_log.out" in out and f"squeue -j {job}" in out, out
    wait_for_checkpoint(slurm, job, run_dir)
    # submitit's preemption/time-out signal
    run(["scancel", "--signal=USR2", job], job_env(slurm))
    fields = wait_ended(slurm, job)
    rank0 = (run_dir / "submitit" / f"{job}_0_log.out").read_text()
    rank0_err = (run_dir / "submitit" / f"{job}_0_log.err").read_text()
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", rank0[-3000:] + rank0_err[-3000:]
    wait_attempts(slurm, job, ["REQUEUED", "COMPLETED"])
    # the trainer's collective checkpoint first, then submitit's handler: checkpoint() -> scontrol requeue
    stop = re.search(r"stop signal received: checkpoint (img\d+) saved", rank0)
    stopped_at = stop.group(1)
    assert stop.start() < rank0.index("Calling checkpoint method") < rank0.index(f"Requeued job {job}"), rank0[-3000:]
    assert f"resuming from checkpoint {stopped_at}:" in rank0  # the requeued attempt starts where the stop saved
    final = status(run_dir)
    assert final["state"] == "finished" and final["restart_count"] == 1
    assert_same_weights(run_dir, reference_run.run_dir)

    import submitit

    result = submitit.SlurmJob(folder=run_dir / "submitit", job_id=job).result()
    assert result["exit_code"] == 0 and result["status"]["state"] == "finished"
