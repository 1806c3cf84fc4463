"""Ranks from the environment (torchrun, deepspeed launcher, srun, or a bare single process)."""
from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _slurm_master() -> str:
    nodes = os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1")
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return nodes.split(",")[0]


def setup_env() -> DistEnv:
    """Fill RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT (what DeepSpeed and torch read)."""
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        env.setdefault("MASTER_ADDR", _slurm_master())
        # Every task of the job derives the same port from the job id.
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    if "RANK" not in env:
        env.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
    env.setdefault("LOCAL_RANK", "0")
    return current()


def current() -> DistEnv:
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistEnv(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                   int(os.environ.get("LOCAL_RANK", "0")))


def is_rank0() -> bool:
    return current().rank == 0


def print0(*args, **kwargs) -> None:
    if is_rank0():
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of a CPU float64 tensor over ranks (gloo and nccl both accept CPU->device copies here)."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    backend = dist.get_backend()
    work = tensor.cuda() if backend == "nccl" else tensor.clone()
    dist.all_reduce(work)
    return work.cpu()
