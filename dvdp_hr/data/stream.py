"""StageStream: the infinite, exactly resumable batch stream of one stage's shard set.

With num_workers = W > 0, a torch DataLoader (batch_size=None, in-order) runs W workers; each
yields whole batches, so batch b comes from logical worker b % W. The saved position is taken
from the batches the trainer CONSUMED (workers run ahead), per logical worker: (epoch, outputs
taken). A fresh stream that resumes after b batches maps DataLoader worker j to logical worker
(j + b) % W, so its first batch comes from the worker that would have produced batch b.
num_workers=0 reads in the calling process and is the same stream as num_workers=1.
"""

import hashlib
import logging
import signal
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .images import decode_rgb
from .order import slot_stream
from .shards import check_enough_shards, url_list

log = logging.getLogger(__name__)
STATE_VERSION = 1
MAX_CONSECUTIVE_CORRUPT = 1000  # a stream that is all errors is a broken data set, not bad luck


@dataclass(frozen=True)
class StreamConfig:
    urls: tuple[str, ...]
    resolution: int
    batch_size: int
    seed: int
    rank: int
    world_size: int
    workers: int  # logical workers: max(1, num_workers)
    shuffle_buffer: int
    flip: bool

    def fingerprint(self) -> dict:
        """What the order depends on; shard basenames only, so a moved copy still resumes."""
        names = "\n".join(PurePosixPath(u).name for u in self.urls)
        fields = {k: v for k, v in asdict(self).items() if k != "urls"}
        return {
            **fields,
            "num_shards": len(self.urls),
            "shards_sha256": hashlib.sha256(names.encode()).hexdigest(),
        }


# uint8 p -> float32(p / 127.5 - 1), correctly rounded; a table lookup is several times faster
# than torch's elementwise div/sub on small CPU batches and gives the same value for every p
_TO_UNIT_RANGE = (np.arange(256, dtype=np.float64) / 127.5 - 1.0).astype(np.float32)


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    channels_first = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))
    return torch.from_numpy(_TO_UNIT_RANGE[channels_first])


def worker_batches(config: StreamConfig, worker: int, start: tuple[int, int], corrupt: int):
    """(worker, float batch in [-1, 1], position after the batch, corrupt count) forever."""
    slot, slots = config.rank * config.workers + worker, config.world_size * config.workers
    images, consecutive = [], 0
    for epoch, taken, item, flip in slot_stream(
        list(config.urls), config.seed, config.shuffle_buffer, slot, slots, tuple(start)
    ):
        try:
            if "__error__" in item:
                raise ValueError(item["__error__"])
            pixels = decode_rgb(item["png"], config.resolution)
        except Exception as exn:  # a bad sample is counted and skipped, never fatal
            corrupt, consecutive = corrupt + 1, consecutive + 1
            if corrupt <= 10:
                _warn_skipped(item, exn)
            if consecutive > MAX_CONSECUTIVE_CORRUPT:
                raise RuntimeError(
                    f"{consecutive} corrupt samples in a row in {config.urls[0]}...: "
                    "check the shards with data_tools/inspect_shards.py"
                ) from exn
            continue
        consecutive = 0
        images.append(pixels[:, ::-1] if flip and config.flip else pixels)
        if len(images) == config.batch_size:
            yield worker, _to_tensor(images), (epoch, taken), corrupt
            images = []


def _warn_skipped(item: dict, exn: Exception) -> None:
    log.warning("skipping corrupt sample %s in %s: %s", item.get("__key__"), item.get("__url__"), exn)


class _WorkerBatches(IterableDataset):
    def __init__(self, config: StreamConfig, positions: list, corrupt: list, first_worker: int):
        self.config, self.positions, self.corrupt, self.first_worker = (
            config,
            positions,
            corrupt,
            first_worker,
        )

    def __iter__(self):
        info = get_worker_info()
        worker = ((info.id if info else 0) + self.first_worker) % self.config.workers
        return worker_batches(self.config, worker, self.positions[worker], self.corrupt[worker])


def ignore_stop_signals(_worker_id: int) -> None:
    """Loader workers ignore the stop signals. SLURM signals every process of a job step, workers
    included: a worker that died of SIGTERM/SIGUSR1 would make the trainer's DataLoader raise in
    the middle of a step, before the collective checkpoint the signal asks for. The trainer
    checkpoints and exits; its workers then end with it."""
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


class StageStream:
    """Infinite stream of [batch_size, 3, resolution, resolution] float32 batches in [-1, 1]."""

    def __init__(
        self,
        urls,
        resolution: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        shuffle_buffer: int = 1000,
        flip: bool = True,
        pin_memory: bool = False,
    ):
        _check_args(resolution, batch_size, seed, rank, world_size, num_workers, shuffle_buffer)
        self.num_workers = num_workers
        self.pin_memory = pin_memory  # page-locked batches: the trainer's device copy does not block
        self.config = StreamConfig(
            tuple(url_list(urls)),
            resolution,
            batch_size,
            seed,
            rank,
            world_size,
            max(1, num_workers),
            shuffle_buffer,
            bool(flip),
        )
        check_enough_shards(len(self.config.urls), world_size * self.config.workers,
                            f"the {resolution}x{resolution} shard set ({self.config.urls[0]}, ...)")
        self._batches = 0
        self._positions = [(0, 0)] * self.config.workers
        self._corrupt = [0] * self.config.workers

    @property
    def corrupt_count(self) -> int:
        """Samples skipped by the error handler up to the last consumed batch (resumes included)."""
        return sum(self._corrupt)

    def _source(self):
        dataset = _WorkerBatches(
            self.config,
            list(self._positions),
            list(self._corrupt),
            self._batches % self.config.workers,
        )
        if self.num_workers == 0:
            return iter(dataset)
        # An explicit generator: DataLoader would otherwise draw its base seed from the global
        # RNG at the first next(), shifting the trainer's dropout stream after a resume.
        return iter(
            DataLoader(dataset, batch_size=None, num_workers=self.num_workers, in_order=True,
                       pin_memory=self.pin_memory, worker_init_fn=ignore_stop_signals,
                       generator=torch.Generator().manual_seed(self.config.seed))
        )

    def __iter__(self):
        for worker, images, position, corrupt in self._source():
            if worker != self._batches % self.config.workers:
                raise RuntimeError(
                    f"batch {self._batches} came from worker {worker}: DataLoader order broken"
                )
            self._positions[worker] = (int(position[0]), int(position[1]))
            self._corrupt[worker] = int(corrupt)
            self._batches += 1
            yield images

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "batches": self._batches,
            "positions": [list(p) for p in self._positions],
            "corrupt": list(self._corrupt),
            "config": self.config.fingerprint(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"stream state version {state.get('version')} != {STATE_VERSION}")
        saved, current = state["config"], self.config.fingerprint()
        changed = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
        if changed:
            raise ValueError(
                f"cannot resume the data stream exactly: settings changed since it was saved "
                f"(saved, now) = {changed}; restore them, or start the stream fresh"
            )
        self._batches = int(state["batches"])
        self._positions = [(int(e), int(t)) for e, t in state["positions"]]
        self._corrupt = [int(c) for c in state["corrupt"]]


def _check_args(
    resolution, batch_size, seed, rank, world_size, num_workers, shuffle_buffer
) -> None:
    checks = [
        (resolution >= 1, f"resolution={resolution}: must be positive"),
        (batch_size >= 1, f"batch_size={batch_size}: must be positive"),
        (isinstance(seed, int) and seed >= 0, f"seed={seed!r}: must be a non-negative int"),
        (
            world_size >= 1 and 0 <= rank < world_size,
            f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size",
        ),
        (num_workers >= 0, f"num_workers={num_workers}: must be >= 0"),
        (shuffle_buffer >= 1, f"shuffle_buffer={shuffle_buffer}: must be >= 1 (1 = no shuffling)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
