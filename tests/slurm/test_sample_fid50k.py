"""`sbatch slurm/sample_fid50k.sh` on the local Slurm (tiny model, CPU, 2 tasks over gloo): sampling
then FID in one job, equal to the score of one process; a job warned of its time limit (SIGUSR1 to
the batch shell) requeues itself and the next attempt completes the folder."""
import json
import os
import re
import sys
import time

import pytest

from slurm_jobs import REPO, job_env, log_text, run, wait_ended, wait_for

sys.path.insert(0, str(REPO / "tests"))
from sampling_helpers import fake_inception, image_folder, one_thread, tiny_export  # noqa: E402

pytestmark = pytest.mark.slow
SCRIPT = str(REPO / "slurm" / "sample_fid50k.sh")
CPU_RESOURCES = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0", "--time=20"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from dvdp_hr.cli import main

    root = tmp_path_factory.mktemp("fid50k")
    weights = fake_inception(root / "inception-2015-12-05.pt")
    ref = str(root / "ref.npz")
    assert main(["ref-stats", "--shards", image_folder(root / "data", 20, seed=0, size=64), "--out", ref, "--kid",
                 "--inception", weights, "--workers", "0"]) == 0
    return {"model": tiny_export(root / "tiny.safetensors"), "ref": ref, "inception": weights}


def _sbatch(slurm, inputs, outdir, seeds: str, log_dir, steps: int = 4) -> str:
    env = job_env(slurm, DVDP_MODEL=inputs["model"], DVDP_OUTDIR=str(outdir), DVDP_SEEDS=seeds,
                  DVDP_REF=inputs["ref"], DVDP_INCEPTION=inputs["inception"],
                  DVDP_ARGS=f"--steps {steps} --batch 2 --device cpu --progress-seconds 0",
                  DVDP_FID_ARGS="--workers 0 --device cpu")
    out = run(["sbatch", "--parsable", *CPU_RESOURCES, f"--output={log_dir}/%j.out", SCRIPT], env)
    return out.strip().split(";")[0]


def test_sampling_and_fid_in_one_job_score_like_one_process(slurm, inputs, tmp_path):
    from dvdp_hr.cli import main

    job = _sbatch(slurm, inputs, tmp_path / "samples", "0-9", tmp_path)
    fields = wait_ended(slurm, job)
    log = log_text(tmp_path, job)
    assert fields["JobState"] == "COMPLETED", log[-4000:]
    result = json.loads((tmp_path / "samples" / "fid.json").read_text())
    assert result["world_size"] == 2 and result["count"] == 10 and "kid" in result
    with one_thread():  # the job's ranks run with OMP_NUM_THREADS=1
        assert main(["fid", "--images", str(tmp_path / "samples"), "--ref", inputs["ref"], "--inception",
                     inputs["inception"], "--workers", "0", "--json", str(tmp_path / "one.json")]) == 0
    assert abs(json.loads((tmp_path / "one.json").read_text())["fid"] - result["fid"]) < 1e-9


def test_a_job_warned_of_its_time_limit_requeues_and_completes(slurm, inputs, tmp_path):
    outdir = tmp_path / "samples"
    job = _sbatch(slurm, inputs, outdir, "0-23", tmp_path, steps=20)
    wait_for(lambda: outdir.is_dir() and any(n.endswith(".png") for n in os.listdir(outdir)), 300, "first PNG")
    run(["scancel", "--batch", "--signal=USR1", job], job_env(slurm))  # what --signal=B:USR1@300 does
    time.sleep(1)
    fields = wait_ended(slurm, job)
    log = log_text(tmp_path, job)
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", log[-4000:]
    assert "requeueing: scontrol requeue" in log
    resumed = re.findall(r"sample: 24 seeds in 12 batches of 2; ([\d,]+) images already in", log)
    assert len(resumed) == 2 and int(resumed[1]) > 0, resumed  # the second attempt kept the first one's PNGs
    assert sorted(n for n in os.listdir(outdir) if n.endswith(".png")) == [f"seed{s:06d}.png" for s in range(24)]
    assert json.loads((outdir / "fid.json").read_text())["count"] == 24
