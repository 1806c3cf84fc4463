"""Training progress: a tqdm bar on a terminal, periodic log lines otherwise (SLURM log files,
where a bar's carriage returns become one huge line)."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


def _duration(seconds: float) -> str:
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h{minutes:02d}m" if days else f"{hours}h{minutes:02d}m"


class LineProgress:
    """`update(images)` like tqdm; prints one line every `every_seconds` (and at close)."""

    def __init__(self, total: int, initial: int, every_seconds: float, stream=None, clock=time.monotonic):
        self.total, self.done, self.every = total, initial, every_seconds
        self.stream, self.clock = stream or sys.stdout, clock
        self._last_time, self._last_done = clock(), initial

    def update(self, images: int) -> None:
        self.done += images
        if self.clock() - self._last_time >= self.every:
            self._print()

    def _print(self) -> None:
        now = self.clock()
        rate = (self.done - self._last_done) / max(now - self._last_time, 1e-9)
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        print(f"progress: {self.done:,}/{self.total:,} images ({100 * self.done / self.total:.1f}%), "
              f"{rate:,.1f} img/s, eta {eta}", file=self.stream, flush=True)
        self._last_time, self._last_done = now, self.done

    def close(self) -> None:
        if self.done != self._last_done:
            self._print()


class _Silent:
    def update(self, images: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, initial: int, enabled: bool, every_seconds: float):
    """A bar on a terminal, log lines when stdout is a file or pipe, nothing when disabled."""
    if not enabled:
        return _Silent()
    if sys.stdout.isatty():
        return tqdm(total=total, initial=initial, unit="img", dynamic_ncols=True)
    return LineProgress(total, initial, every_seconds)
