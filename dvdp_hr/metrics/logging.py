"""Rank-0 run logging: stats.jsonl, loss.jsonl (one line per optimizer step), wandb, PNG grids.

wandb runs offline by default with every file inside RUN/wandb; its run id is kept in the
checkpoint so a resumed job continues the same wandb run.
"""
from __future__ import annotations

import json
import math
import os
import uuid

import numpy as np
import torch
from PIL import Image

STATS = "stats.jsonl"
LOSSES = "loss.jsonl"


def truncate_jsonl(path: str, last_step: int, block: int = 1 << 16) -> None:
    """Cut the records logged after `last_step` (steps a resumed run is about to redo) by truncating
    the file in place: records are appended in step order, so only the tail is read, never the
    whole log, and nothing before the cut is rewritten. A line cut short by a kill goes too."""
    if not os.path.isfile(path):
        return
    with open(path, "rb+") as fh:
        end = fh.seek(0, os.SEEK_END)
        cut = _cut_position(fh, end, last_step, block)
        if cut < end:
            fh.truncate(cut)


def _cut_position(fh, end: int, last_step: int, block: int) -> int:
    """Byte offset just after the last complete line whose step is <= last_step (0 if none)."""
    pos = end
    while True:
        pos = max(0, pos - block)
        fh.seek(pos)
        lines = fh.read(end - pos).split(b"\n")
        # the last piece follows the last newline (a partial line, or b""); the first piece is
        # only known to be whole when it starts the file
        starts = [pos]
        for line in lines[:-1]:
            starts.append(starts[-1] + len(line) + 1)
        for i in range(len(lines) - 2, -1 if pos == 0 else 0, -1):
            if _step_of(lines[i].decode(errors="replace")) <= last_step:
                return starts[i + 1]
        if pos == 0:
            return 0


def _step_of(line: str) -> float:
    """The record's step; a line cut short by a kill mid-write counts as after every checkpoint."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


def read_jsonl(path: str) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def image_grid(images: torch.Tensor, path: str) -> str:
    """Save [N, C, H, W] images in [-1, 1] as one PNG grid (ceil(sqrt(N)) columns)."""
    n, c, h, w = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.ones(c, rows * h, cols * w)
    for i, img in enumerate(images.detach().float().cpu().clamp(-1, 1)):
        r, col = divmod(i, cols)
        grid[:, r * h:(r + 1) * h, col * w:(col + 1) * w] = (img + 1) / 2
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array.squeeze(-1) if c == 1 else array).save(path)
    return path


class RunLogger:
    """Writes only on rank 0 (`enabled`); every other rank gets a silent logger."""

    def __init__(self, run_dir: str, enabled: bool, mode: str, project: str, config: dict,
                 wandb_id: str | None = None, resume_step: int = 0):
        self.run_dir, self.enabled, self.wandb_id, self._wandb = run_dir, enabled, wandb_id, None
        if not enabled:
            return
        for name in (STATS, LOSSES):
            truncate_jsonl(os.path.join(run_dir, name), resume_step)
        if mode != "disabled":
            self._start_wandb(mode, project, config)

    def _start_wandb(self, mode: str, project: str, config: dict) -> None:
        folder = os.path.join(self.run_dir, "wandb")
        os.makedirs(folder, exist_ok=True)
        for var, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", ".cache"), ("WANDB_CONFIG_DIR", ".config"),
                         ("WANDB_DATA_DIR", ".data")):
            os.environ[var] = os.path.join(folder, sub) if sub else folder
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb  # optional at import time: only rank 0 of a logging run needs it

        self.wandb_id = self.wandb_id or uuid.uuid4().hex[:12]
        self._wandb = wandb.init(project=project, id=self.wandb_id, resume="allow", mode=mode,
                                 dir=folder, config=config, name=os.path.basename(os.path.abspath(self.run_dir)))

    def _append(self, name: str, records: list[dict]) -> None:
        with open(os.path.join(self.run_dir, name), "a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)

    def log_losses(self, records: list[dict]) -> None:
        if self.enabled:
            self._append(LOSSES, records)

    def log_stats(self, record: dict) -> None:
        if not self.enabled:
            return
        self._append(STATS, [record])
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def log_image(self, step: int, path: str) -> None:
        if self.enabled and self._wandb is not None:
            import wandb

            self._wandb.log({"samples": wandb.Image(path)}, step=step)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
