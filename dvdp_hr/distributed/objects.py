"""Small picklable objects across ranks (lock outcome, checkpoint checksums, verification results).

Call only after the engine exists: under NCCL the objects travel through the current CUDA
device, which DeepSpeed's engine sets to this rank's local GPU.
"""
from __future__ import annotations

import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_from0(obj):
    """Rank 0's `obj` on every rank (collective)."""
    if not _distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_all(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (collective)."""
    if not _distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
