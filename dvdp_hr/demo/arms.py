"""The demo's two arms, each trained by the real trainer under torchrun (DeepSpeed ZeRO-2, gloo,
one thread per rank): DVDP (configs/demo_dvdp.yaml) and the fixed-resolution baseline
(configs/demo_fixed.yaml) with train.max_images chosen so it uses the DVDP arm's training FLOPs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dvdp_hr.distributed.env import free_port

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@dataclass
class Arm:
    name: str         # "dvdp" | "fixed"
    label: str        # for tables and plots
    config: str       # YAML path
    run_dir: str


def arms(run_dir: str) -> list[Arm]:
    return [Arm("dvdp", "DVDP (64 <- 32 <- 16 px)", str(CONFIGS / "demo_dvdp.yaml"), os.path.join(run_dir, "dvdp")),
            Arm("fixed", "fixed resolution (64 px)", str(CONFIGS / "demo_fixed.yaml"), os.path.join(run_dir, "fixed"))]


def train_command(arm: Arm, shards: str, max_images: int, overrides: list[str], nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), "-m", "dvdp_hr.cli", "train", "--config", arm.config,
            "--run-dir", arm.run_dir, "--shards", shards, "--max-images", str(max_images), *overrides]


def train_env() -> dict:
    import torch

    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")  # DeepSpeed's deprecated collectives, once per rank
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")  # said, not guessed: DeepSpeed then skips its "no GPU" warning
    env.setdefault("TORCH_EXTENSIONS_DIR", str(CONFIGS.parent / ".cache" / "torch_extensions"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CONFIGS.parent), env.get("PYTHONPATH")]))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # a demo started inside another job must not join it
    return env


def check_compiler(env: dict) -> None:
    """DeepSpeed's CPU backend compiles a small C++ op (shared-memory collectives) on its first start
    (~30 s, cached in TORCH_EXTENSIONS_DIR); without a compiler both ranks die in ninja tracebacks."""
    built = os.path.isdir(os.path.join(env["TORCH_EXTENSIONS_DIR"], "deepspeed_shm_comm"))
    compiler = env.get("CXX", "c++")
    if env.get("DS_ACCELERATOR") == "cpu" and not built and not shutil.which(compiler):
        raise RuntimeError(f"no C++ compiler ({compiler!r} is not on PATH): DeepSpeed's CPU backend compiles a small "
                           "op on first use. Install one (Debian/Ubuntu: apt install g++) and run `make demo` again.")


def train_arm(arm: Arm, shards: str, max_images: int, overrides: list[str], nproc: int = 2) -> None:
    """Trains (or resumes, or finds finished) one arm; its progress lines go to this terminal."""
    cmd, env = train_command(arm, shards, max_images, overrides, nproc), train_env()
    check_compiler(env)
    code = subprocess.run(cmd, env=env).returncode
    if code:
        raise RuntimeError(f"training the {arm.name} arm exited {code} (the ranks' errors are above). The command "
                           f"was:\n  {' '.join(cmd)}\nOnce fixed, `make demo` again resumes from the last checkpoint.")
