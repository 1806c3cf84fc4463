"""`sbatch slurm/train_ffhq1024.sh` on a real Slurm (tiny CPU config, 2 ranks over gloo): a
finished run on two nodes, a run signalled before its limit that checkpoints, requeues itself and
ends bitwise equal to the uninterrupted run, a preempted run, a hard-killed run resumed by
resubmission, and a requeued attempt that fails and is not requeued again."""
import json
import shutil
import time

import pytest

from slurm_jobs import (MAX_IMAGES, assert_same_weights, attempts, job_env, job_fields, kill_tasks, log_text,
                        run, sbatch_train, status, wait_attempts, wait_ended, wait_for, wait_for_checkpoint)

pytestmark = pytest.mark.slow


def test_one_job_on_two_nodes_trains_over_gloo_and_leaves_a_checkpoint(slurm, reference_run):
    ref = reference_run
    log = log_text(ref.log_dir, ref.job_id)
    assert ref.fields["JobState"] == "COMPLETED", log[-3000:]
    rows = wait_attempts(slurm, ref.job_id, ["COMPLETED"])
    assert rows[0]["exit_code"] == "0:0" and rows[0]["nodes"] == "node[1-2]"
    done = status(ref.run_dir)
    assert done["state"] == "finished" and done["images"] == MAX_IMAGES and done["world_size"] == 2
    latest = (ref.run_dir / "checkpoints" / "latest").read_text().strip()
    meta = json.loads((ref.run_dir / "checkpoints" / latest / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["counters"]["images"] == MAX_IMAGES
    assert f"job {ref.job_id} attempt 1 on node[1-2]: 2 tasks, master node1" in log
    assert "training step ended: exit code 0, status 'finished'" in log


def test_a_signal_before_the_limit_checkpoints_requeues_and_matches_the_uninterrupted_run(
        slurm, reference_run, tiny_shards, tmp_path, cancel_after):
    run_dir = tmp_path / "run"
    job = sbatch_train(slurm, run_dir, tiny_shards, tmp_path)
    cancel_after.append(job)
    first = wait_for_checkpoint(slurm, job, run_dir)
    # what --signal=USR1@300 does before the time limit: SIGUSR1 to the training processes
    run(["scancel", "--signal=USR1", job], job_env(slurm))
    fields = wait_ended(slurm, job)
    log = log_text(tmp_path, job)
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", log[-4000:]
    wait_attempts(slurm, job, ["REQUEUED", "COMPLETED"])
    assert "status 'requeue'" in log and f"scontrol requeue {job}" in log
    stopped_at = int(log.split("stop signal received: checkpoint img")[1][:12])
    assert int(first[3:]) < stopped_at < MAX_IMAGES
    assert f"resuming from checkpoint img{stopped_at:012d}" in log
    assert f"job {job} attempt 2 on node1" in log
    final = status(run_dir)
    assert final["state"] == "finished" and final["restart_count"] == 1 and final["attempt"] == f"slurm-{job}.1"
    assert_same_weights(run_dir, reference_run.run_dir)


def test_a_preempted_job_checkpoints_and_resumes_after_the_preemptor(slurm, reference_run, tiny_shards, tmp_path,
                                                                      cancel_after):
    run_dir = tmp_path / "run"
    job = sbatch_train(slurm, run_dir, tiny_shards, tmp_path, sbatch_args=["--nodelist=node1"])
    cancel_after.append(job)
    wait_for_checkpoint(slurm, job, run_dir)
    # a job of the higher-priority partition needs node1: Slurm preempts ours (PreemptMode=REQUEUE,
    # its --signal first, then SIGTERM after the partition's GraceTime)
    high = run(["sbatch", "--parsable", "--partition=high", "--nodelist=node1", "--ntasks=2", "--cpus-per-task=1",
                f"--output={tmp_path}/high-%j.out", "--wrap", "sleep 2"], job_env(slurm)).strip()
    cancel_after.append(high)
    fields = wait_ended(slurm, job)
    log = log_text(tmp_path, job)
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", log[-4000:]
    assert job_fields(slurm, high)["JobState"] == "COMPLETED"
    stopped_at = int(log.split("stop signal received: checkpoint img")[1][:12])
    assert f"resuming from checkpoint img{stopped_at:012d}" in log
    assert status(run_dir)["state"] == "finished"
    assert_same_weights(run_dir, reference_run.run_dir)


def test_a_hard_killed_job_resumes_from_the_last_published_checkpoint_when_resubmitted(
        slurm, reference_run, tiny_shards, tmp_path, cancel_after):
    run_dir = tmp_path / "run"
    job = sbatch_train(slurm, run_dir, tiny_shards, tmp_path)
    cancel_after.append(job)
    wait_for_checkpoint(slurm, job, run_dir)
    assert len(kill_tasks(slurm, job)) == 2  # SIGKILL to both ranks: nothing is handled, nothing saved
    fields = wait_ended(slurm, job)
    log = log_text(tmp_path, job)
    assert fields["JobState"] == "FAILED" and fields["Restarts"] == "0", log[-4000:]
    killed = status(run_dir)  # the trainer could record nothing: the batch script records the failure
    assert killed["state"] == "failed" and "before the trainer recorded an outcome" in killed["reason"], killed
    assert killed["world_size"] == 2 and killed["exit_code"] == int(fields["ExitCode"].split(":")[0]) != 0
    published = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert int(published[3:]) < MAX_IMAGES
    again = sbatch_train(slurm, run_dir, tiny_shards, tmp_path)  # the same command
    cancel_after.append(again)
    fields = wait_ended(slurm, again)
    log = log_text(tmp_path, again)
    assert fields["JobState"] == "COMPLETED", log[-4000:]
    resumed_from = int(log.split("resuming from checkpoint img")[1][:12])
    assert resumed_from >= int(published[3:])  # the kill may have come after a newer publication
    assert status(run_dir)["state"] == "finished"
    assert_same_weights(run_dir, reference_run.run_dir)


def test_a_requeued_attempt_that_fails_is_not_requeued_again(slurm, tiny_shards, tmp_path, cancel_after):
    shards = shutil.copytree(tiny_shards, tmp_path / "shards")
    run_dir = tmp_path / "run"
    job = sbatch_train(slurm, run_dir, shards, tmp_path)
    cancel_after.append(job)
    wait_for_checkpoint(slurm, job, run_dir)
    run(["scancel", "--signal=USR1", job], job_env(slurm))
    # attempt 1 asked for the requeue; hold the requeued job and damage the shard set it reads
    wait_for(lambda: job_fields(slurm, job).get("Restarts") == "1", 300, f"job {job} to be requeued")
    run(["scontrol", "hold", job], job_env(slurm))
    assert status(run_dir)["state"] == "requeue"
    next((shards / "64").glob("*.tar")).unlink()
    run(["scontrol", "release", job], job_env(slurm))
    fields = wait_ended(slurm, job)
    log = log_text(tmp_path, job)
    assert fields["JobState"] == "FAILED" and fields["Restarts"] == "1", log[-4000:]
    assert fields["ExitCode"] == "2:0"  # the CLI's exit code for a refused start
    rows = wait_attempts(slurm, job, ["REQUEUED", "FAILED"])
    assert rows[-1]["exit_code"] == "2:0"
    failed = status(run_dir)
    assert failed["state"] == "failed" and failed["restart_count"] == 1, failed
    assert failed["reason"].startswith("ConfigError: data.shards=") and "damaged shard" in failed["reason"], failed
    assert "training step ended: exit code 2, status 'failed'" in log
    time.sleep(15)  # longer than a requeue takes (cred_expire=10): it stays failed
    assert job_fields(slurm, job)["JobState"] == "FAILED" and len(attempts(slurm, job)) == 2
