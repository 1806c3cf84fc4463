"""Helpers for the tests on the local Slurm: job environment, sbatch of the real script, waiting on
job states (scontrol while queued, sacct for each attempt), final weights."""
import json
import os
import subprocess
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = str(REPO / "configs" / "tiny_cpu.yaml")
SCRIPT = str(REPO / "slurm" / "train_ffhq1024.sh")
MAX_IMAGES, EVERY = 256, 64
TRAIN_ARGS = ["--max-images", str(MAX_IMAGES), "--checkpoint-every", str(EVERY), "logging.every_steps=4",
              "logging.progress=false", "logging.sample_every_images=0", "logging.sample_count=2",
              "logging.sample_steps=3", "logging.wandb_mode=disabled"]
# the CPU Slurm has no GPUs: the script's #SBATCH GPU and size lines are overridden on the command line
CPU_RESOURCES = ["--cpus-per-task=1", "--gpus-per-node=0", "--time=20"]
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED"}


def job_env(slurm_conf: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SUBMITIT_", "DVDP_"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update({"SLURM_CONF": slurm_conf, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                "WANDB_MODE": "disabled", "DVDP_PYTHON": str(REPO / ".venv" / "bin" / "python")})
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    if not Path(env["DVDP_PYTHON"]).exists():
        import sys

        env["DVDP_PYTHON"] = sys.executable
    env.update(extra)
    return env


def run(cmd: list[str], env: dict, timeout: float = 60) -> str:
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}: {out.stdout}\n{out.stderr}")
    return out.stdout


def sbatch_train(slurm_conf: str, run_dir, shards, log_dir, nodes: int = 1, tasks_per_node: int = 2,
                 args: list[str] = (), sbatch_args: list[str] = ()) -> str:
    """`sbatch slurm/train_ffhq1024.sh` on the tiny config, the way a user would (environment only)."""
    env = job_env(slurm_conf, DVDP_CONFIG=TINY_CONFIG, DVDP_RUN_DIR=str(run_dir),
                  DVDP_ARGS=" ".join(["--shards", str(shards), *TRAIN_ARGS, *args]))
    out = run(["sbatch", "--parsable", f"--nodes={nodes}", f"--ntasks-per-node={tasks_per_node}", *CPU_RESOURCES,
               f"--output={log_dir}/%j.out", *sbatch_args, SCRIPT], env)
    return out.strip().split(";")[0]


def job_fields(slurm_conf: str, job_id: str) -> dict:
    out = run(["scontrol", "show", "job", "-o", job_id], job_env(slurm_conf))
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.3):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def wait_ended(slurm_conf: str, job_id: str, timeout: float = 600) -> dict:
    """Wait until the job is over (a requeued job is not); returns its scontrol fields."""
    return wait_for(lambda: (lambda f: f if f["JobState"] in ENDED else None)(job_fields(slurm_conf, job_id)),
                    timeout, f"job {job_id} to end")


def attempts(slurm_conf: str, job_id: str) -> list[dict]:
    """One sacct record per attempt of the job (allocation lines only), oldest first."""
    out = run(["sacct", "-X", "-D", "-n", "-P", "-j", job_id, "-o", "JobID,State,ExitCode,NodeList"],
              job_env(slurm_conf))
    rows = [dict(zip(("job_id", "state", "exit_code", "nodes"), line.split("|"))) for line in out.splitlines()
            if line.strip()]
    for row in rows:
        row["state"] = row["state"].split()[0]  # "CANCELLED by 0" -> "CANCELLED"
    return rows


def wait_attempts(slurm_conf: str, job_id: str, states: list[str], timeout: float = 60) -> list[dict]:
    """sacct may lag the controller by a moment: wait until it lists `states` for the attempts."""
    return wait_for(lambda: (lambda rows: rows if [r["state"] for r in rows] == states else None)(
        attempts(slurm_conf, job_id)), timeout, f"sacct to show {states} for job {job_id} "
                                                f"(has {[r['state'] for r in attempts(slurm_conf, job_id)]})")


def status(run_dir) -> dict:
    path = Path(run_dir) / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}


def wait_for_checkpoint(slurm_conf: str, job_id: str, run_dir, timeout: float = 300) -> str:
    latest = Path(run_dir) / "checkpoints" / "latest"

    def ready():
        if latest.exists():
            return latest.read_text().strip()
        state = job_fields(slurm_conf, job_id)["JobState"]
        assert state not in ENDED, f"job {job_id} ended ({state}) before its first checkpoint"
        return None

    return wait_for(ready, timeout, f"the first checkpoint of job {job_id}")


def kill_tasks(slurm_conf: str, job_id: str, step: str = "0") -> list[int]:
    """SIGKILL the training processes of a job step directly (a rank or node dying: nothing can be
    handled). `scancel --signal=KILL` would instead cancel the whole job, SIGTERM first."""
    out = run(["scontrol", "listpids", job_id], job_env(slurm_conf))
    pids = [int(cols[0]) for cols in (line.split() for line in out.splitlines()[1:])
            if len(cols) >= 4 and cols[2] == step and cols[3] != "-"]
    assert pids, f"no task processes of step {job_id}.{step}: {out}"
    for pid in pids:
        os.kill(pid, 9)
    return pids


def log_text(log_dir, job_id: str) -> str:
    path = Path(log_dir) / f"{job_id}.out"
    return path.read_text() if path.exists() else ""


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    """Raw and EMA weights of the checkpoint `latest` names."""
    folder = Path(run_dir) / "checkpoints" / (Path(run_dir) / "checkpoints" / "latest").read_text().strip()
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update({f"{path.stem}/{k}": v for k, v in load_file(str(path)).items()})
    assert any(k.startswith("raw/") for k in tensors) and any(k.startswith("ema-") for k in tensors), sorted(tensors)
    return tensors


def assert_same_weights(run_dir, reference_dir) -> None:
    got, want = final_weights(run_dir), final_weights(reference_dir)
    assert got.keys() == want.keys()
    different = [k for k in want if not torch.equal(got[k], want[k])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"
