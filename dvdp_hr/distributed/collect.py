"""Collectives for evaluation: rows gathered from every rank, objects broadcast from rank 0.

Every function is a no-op (or the identity) without a process group, so a single process needs no
launcher. torch.distributed is imported lazily (sys.modules), like env.py. With nccl, tensors
travel through this rank's current CUDA device (env.init_process_group binds it); gloo uses CPU.
"""
from __future__ import annotations

import sys

import torch


def _dist():
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def _comm_device(dist) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Concatenation over ranks (in rank order) of each rank's [n_r, ...] tensor; n_r may differ.
    Every rank receives the result (all_gather: the one collective every backend supports)."""
    dist = _dist()
    if dist is None:
        return rows
    device = _comm_device(dist)
    count = torch.tensor([rows.shape[0]], dtype=torch.long, device=device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    counts = [int(c.item()) for c in counts]
    padded = torch.zeros((max(counts), *rows.shape[1:]), dtype=rows.dtype, device=device)
    padded[:rows.shape[0]] = rows.to(device)
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, counts)]).to(rows.device)


def broadcast_object(obj=None):
    """Rank 0's `obj` on every rank (pickled: use for small plans and verdicts only)."""
    dist = _dist()
    if dist is None:
        return obj
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0, device=_comm_device(dist))
    return box[0]


def all_ranks_ok(ok: bool) -> bool:
    """True when `ok` holds on every rank (a failure on one rank is seen by all, no one hangs)."""
    dist = _dist()
    if dist is None:
        return ok
    flag = torch.tensor([0 if ok else 1], dtype=torch.long, device=_comm_device(dist))
    dist.all_reduce(flag)
    return int(flag.item()) == 0


def leave_ranks() -> None:
    """End of a distributed command: wait until every rank is done with the group, then destroy it.
    A rank that exits while another still works in gloo can abort in its destructors ("terminate
    called without an active exception"), and srun then kills the rank that was still working."""
    dist = _dist()
    if dist is not None:
        dist.barrier()
        dist.destroy_process_group()
