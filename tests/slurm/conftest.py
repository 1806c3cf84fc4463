"""A real Slurm on this machine for the tests in this folder (slurm/local/start.sh).

The session fixture reuses a running instance (started by .ci/run or by hand) or starts one, which
needs root and, on a fresh machine, apt. Where that is impossible the tests are skipped with the
reason printed; under CI (CI=true) they FAIL instead: CI must exercise the real thing.
"""
import os
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/dvdp-slurm"))
NODES = 2


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _running(conf: Path) -> bool:
    """The cluster in SLURM_DIR answers and all its nodes are usable."""
    if not conf.is_file():
        return False
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=env, capture_output=True, text=True, timeout=15)
        acct = subprocess.run(["sacct", "-n", "-X", "-j", "1"], env=env, capture_output=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return False
    states = {line.split()[1].rstrip("*~#") for line in out.stdout.splitlines() if line.strip()}
    nodes = {line.split()[0] for line in out.stdout.splitlines() if line.strip()}
    return out.returncode == 0 and acct.returncode == 0 and len(nodes) >= NODES and states <= {"idle", "mixed",
                                                                                               "allocated"}


def _unavailable(reason: str):
    message = f"local Slurm unavailable: {reason}"
    if _in_ci():
        pytest.fail(message + " (CI=true: the Slurm tests must run)", pytrace=False)
    print(f"\nSKIPPING the Slurm tests: {message}", flush=True)
    pytest.skip(message)


@pytest.fixture(scope="session")
def slurm():
    """SLURM_CONF of a running local Slurm with two emulated nodes (node1, node2) and accounting."""
    conf = SLURM_DIR / "etc" / "slurm.conf"
    started = False
    if not _running(conf):
        if os.geteuid() != 0:
            _unavailable(f"no running instance in {SLURM_DIR} and not root (start one: sudo slurm/local/start.sh)")
        t0 = time.time()
        env = {**os.environ, "SLURM_LOCAL_DIR": str(SLURM_DIR), "SLURM_LOCAL_NODES": str(NODES)}
        try:
            out = subprocess.run([str(REPO / "slurm" / "local" / "start.sh")], env=env, capture_output=True,
                                 text=True, timeout=900)
        except subprocess.TimeoutExpired:
            _unavailable("slurm/local/start.sh did not finish within 900 s")
        if out.returncode != 0 or not _running(conf):
            subprocess.run([str(REPO / "slurm" / "local" / "stop.sh"), "--quiet"], env=env, capture_output=True,
                           timeout=300)  # daemons a failed start left behind
            _unavailable(f"slurm/local/start.sh exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        print(f"\nstarted the local Slurm in {time.time() - t0:.0f} s ({conf})", flush=True)
        started = True
    yield str(conf)
    if started and os.environ.get("DVDP_KEEP_SLURM", "") != "1":
        subprocess.run([str(REPO / "slurm" / "local" / "stop.sh"), "--quiet"],
                       env={**os.environ, "SLURM_LOCAL_DIR": str(SLURM_DIR)}, timeout=300)


@pytest.fixture
def cancel_after(slurm):
    """Job ids appended here are cancelled when the test ends (a failed test leaves no job behind)."""
    jobs: list[str] = []
    yield jobs
    if jobs:
        subprocess.run(["scancel", *jobs], env={**os.environ, "SLURM_CONF": slurm}, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def reference_run(slurm, tiny_shards, tmp_path_factory):
    """The uninterrupted run every interrupted one is compared with: `sbatch
    slurm/train_ffhq1024.sh` on the tiny config, one job on both emulated nodes (1 task each)."""
    from types import SimpleNamespace

    from slurm_jobs import sbatch_train, wait_ended

    root = tmp_path_factory.mktemp("slurm_reference")
    t0 = time.time()
    job = sbatch_train(slurm, root / "run", tiny_shards, root, nodes=2, tasks_per_node=1)
    try:
        fields = wait_ended(slurm, job)
    finally:
        subprocess.run(["scancel", job], env={**os.environ, "SLURM_CONF": slurm}, capture_output=True, timeout=60)
    print(f"\nreference run (job {job}, 2 nodes x 1 task): {fields['JobState']} in {time.time() - t0:.0f} s",
          flush=True)
    return SimpleNamespace(run_dir=root / "run", job_id=job, fields=fields, log_dir=root)
