"""Helpers to launch 2-rank torchrun jobs from the integration tests.

DeepSpeed JIT-compiles a CPU shared-memory op on first use (~30 s); TORCH_EXTENSIONS_DIR points
at the repository's .cache (the Makefile's choice) so it is compiled once for all runs.
"""
import os
import subprocess
import sys
from pathlib import Path

from dvdp_hr.distributed.env import free_port

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = str(REPO / "configs" / "tiny_cpu.yaml")


def launch_env(**extra) -> dict:
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    env.update({"WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update(extra)
    return env


def torchrun_cmd(args: list[str], nproc: int = 2) -> list[str]:
    """`torchrun --nproc_per_node N` running `args` (a module after -m, or a script path)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]


def train_cmd(run_dir, shards, max_images: int, checkpoint_every: int, *overrides: str) -> list[str]:
    """The exact CLI the external tests use, under torchrun."""
    return torchrun_cmd(["-m", "dvdp_hr.cli", "train", "--config", TINY_CONFIG, "--run-dir", str(run_dir),
                         "--shards", str(shards), "--max-images", str(max_images),
                         "--checkpoint-every", str(checkpoint_every), *overrides])


def run_checked(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=launch_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc
