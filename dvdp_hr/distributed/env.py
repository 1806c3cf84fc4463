"""Ranks from the environment (torchrun, the deepspeed launcher, a Slurm job step, submitit, or a
bare single process), the rendezvous port, the CUDA device index, and a torch-only process group.

Slurm is detected per job STEP: the tasks `srun` starts have SLURM_STEP_ID and
SLURM_STEP_NUM_TASKS; the batch script's own shell has SLURM_PROCID=0 and SLURM_NTASKS=64 but no
step, and a bare `python` started there is one process, not rank 0 of the job.

DeepSpeed reads LOCAL_RANK as the CUDA device index (engine device, the nccl `device_id`, ZeRO-3's
partitioning), so in a Slurm step on a CUDA machine `setup_env` sets LOCAL_RANK to `device_index()`
(0 with one visible device, as with `--gpus-per-task=1`); the node-local rank stays in
SLURM_LOCALID and `DistEnv.local_rank`.

Importing this module does not import torch (the status CLI of the sbatch script uses it).
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta

# Rendezvous ports derived from a job id: BASE + job_id % SPAN, below Linux's default ephemeral
# range (32768-60999), where a port another process was handed could collide with ours.
PORT_BASE, PORT_SPAN = 10000, 20000
_LOCAL_RANK_ENV = "DVDP_LOCAL_RANK"  # node-local rank when LOCAL_RANK holds the device index


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int  # rank on this node (SLURM_LOCALID / torchrun's LOCAL_RANK)


# ---- what the environment describes (pure: reads os.environ, changes nothing) ----
def in_slurm_step(env=None) -> bool:
    """True in a task started by srun (a job step), False in the batch shell or outside Slurm."""
    env = os.environ if env is None else env
    return "SLURM_PROCID" in env and ("SLURM_STEP_ID" in env or "SLURM_STEP_NUM_TASKS" in env)


def detect(env=None) -> DistEnv:
    """The ranks this process has according to its launcher, without setting anything:
    RANK/WORLD_SIZE/LOCAL_RANK (torchrun, deepspeed, or `setup_env` earlier) win, then a Slurm
    job step, then a single process."""
    env = os.environ if env is None else env
    if "RANK" in env:
        local = env.get(_LOCAL_RANK_ENV, env.get("LOCAL_RANK", "0"))
        return DistEnv(int(env["RANK"]), int(env.get("WORLD_SIZE", "1")), int(local))
    if in_slurm_step(env):
        world = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS", "1")
        return DistEnv(int(env["SLURM_PROCID"]), int(world), int(env.get("SLURM_LOCALID", "0")))
    return DistEnv(0, 1, 0)


def ephemeral_port_range(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> tuple[int, int]:
    try:
        with open(path) as fh:
            lo, hi = (int(v) for v in fh.read().split()[:2])
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def job_port(job_id: int, ephemeral: tuple[int, int] | None = None) -> int:
    """The rendezvous port every task of a job derives from its id: PORT_BASE + job_id % PORT_SPAN
    (10000-29999), moved out of the ephemeral range where this host's range overlaps it."""
    lo, hi = ephemeral or ephemeral_port_range()
    base, span = PORT_BASE, PORT_SPAN
    if base < hi + 1 and lo < base + span:  # overlap: take the widest free window instead
        below, above = (1024, lo - 1024), (hi + 1, 65536 - (hi + 1))
        base, span = max(below, above, key=lambda w: w[1])
        if span < 1000:
            raise RuntimeError(f"the ephemeral port range {lo}-{hi} leaves no room for a rendezvous port; "
                               "set MASTER_PORT yourself")
    return base + job_id % span


def reserved_port(env=None) -> int | None:
    """The first port of SLURM_STEP_RESV_PORTS ('12001-12002', '12001,12005' or '12001'), when
    the step was started with `srun --resv-ports`."""
    env = os.environ if env is None else env
    match = re.match(r"\s*(\d+)", env.get("SLURM_STEP_RESV_PORTS", ""))
    return int(match.group(1)) if match else None


def first_host(nodelist: str) -> str:
    """First host of a Slurm node list ('node[03-05,9],gpu1' -> 'node03'): `scontrol show
    hostnames` when available, else a parser for the usual forms."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=30)
        if out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    head = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?", nodelist.strip())
    prefix, ranges = head.group(1), head.group(2)
    if not ranges:
        return prefix or "127.0.0.1"
    return prefix + ranges.split(",")[0].split("-")[0]


def visible_device_count() -> int:
    """CUDA devices this process may use (CUDA_VISIBLE_DEVICES respected); 0 without CUDA."""
    import torch  # deferred: this module is imported by torch-free tools

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def device_index(local_rank: int | None = None, visible: int | None = None) -> int:
    """CUDA device index of this process: 0 when it sees one device (`--gpus-per-task=1`, or
    CUDA_VISIBLE_DEVICES set per task), else its node-local rank modulo the visible devices
    (all GPUs of the node visible, as with torchrun or `--gpus-per-node`)."""
    if local_rank is None:
        local_rank = detect().local_rank
    if visible is None:
        visible = visible_device_count()
    if visible <= 1:
        return 0
    if local_rank >= visible:
        print(f"warning: node-local rank {local_rank} but only {visible} visible CUDA devices: ranks share "
              "devices (start one task per GPU: --ntasks-per-node = GPUs per node)", file=sys.stderr, flush=True)
    return local_rank % visible


def free_port() -> int:
    """A TCP port free on this host now (for a single-host rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- filling the environment ----
def setup_env() -> DistEnv:
    """Fill RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT (what DeepSpeed and torch read) and
    return this process's ranks. Values a launcher already set are kept."""
    env = os.environ
    if "RANK" not in env and in_slurm_step(env):
        found = detect(env)
        env["RANK"], env["WORLD_SIZE"] = str(found.rank), str(found.world_size)
        env[_LOCAL_RANK_ENV] = str(found.local_rank)
        cuda = visible_device_count()
        env["LOCAL_RANK"] = str(device_index(found.local_rank, cuda) if cuda else found.local_rank)
        env.setdefault("MASTER_ADDR", first_host(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
                                                 or "127.0.0.1"))
        port = reserved_port(env)
        env.setdefault("MASTER_PORT", str(port if port is not None else job_port(int(env.get("SLURM_JOB_ID", "0")))))
    elif "RANK" not in env:
        if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
            print(f"note: not in a Slurm job step: running as ONE process although job {env['SLURM_JOB_ID']} has "
                  f"{env['SLURM_NTASKS']} tasks (start one process per task with srun)", file=sys.stderr, flush=True)
        env.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(free_port()))
    env.setdefault("LOCAL_RANK", "0")
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in env:  # RANK given without a port (a hand-set environment)
        env["MASTER_PORT"] = str(job_port(int(env["SLURM_JOB_ID"])) if "SLURM_JOB_ID" in env else free_port())
    return current()


def init_process_group(timeout_minutes: float = 30.0) -> DistEnv:
    """Join (or reuse) the default torch process group: gloo on CPU, nccl on CUDA with this rank's
    device bound (`device_id`, also the current device). The timeout bounds every collective: a
    dead rank fails the others after it instead of idling them. Used by training (DeepSpeed then
    reuses the group), sampling and FID."""
    import torch
    import torch.distributed as dist

    found = setup_env()
    if dist.is_initialized():
        return current()
    kwargs = {"timeout": timedelta(minutes=timeout_minutes), "rank": found.rank, "world_size": found.world_size}
    if torch.cuda.is_available():
        device = torch.device("cuda", device_index(found.local_rank))
        torch.cuda.set_device(device)
        if found.world_size > 1:  # a bound device makes every new_group an ncclCommSplit; no peer when alone
            kwargs["device_id"] = device
        dist.init_process_group("nccl", **kwargs)
    else:
        dist.init_process_group("gloo", **kwargs)
    return current()


# ---- the running process group ----
def current() -> DistEnv:
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), detect().local_rank)
    return detect()


def is_rank0() -> bool:
    return current().rank == 0


def print0(*args, **kwargs) -> None:
    if is_rank0():
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor):
    """Sum of a CPU float64 tensor over ranks (gloo and nccl both accept CPU->device copies here)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not (dist.is_available() and dist.is_initialized()):
        return tensor
    work = tensor.cuda() if dist.get_backend() == "nccl" else tensor.clone()
    dist.all_reduce(work)
    return work.cpu()
