"""Preemption signals -> a flag the loop polls at step boundaries.

SIGTERM, SIGUSR1 and SIGUSR2 (Slurm's --signal, submitit's timeout signal, a scheduler's
preemption) ask the loop to checkpoint at the next step boundary and exit with
REQUEUE_EXIT_CODE = 75 (EX_TEMPFAIL of sysexits.h: "temporary failure, retry later"). Rerunning
the same command resumes. Under torchrun the agent itself exits 1 when a worker exits non-zero,
so launchers should also read RUN/status.json ({"state": "requeue"}).
"""
from __future__ import annotations

import signal

REQUEUE_EXIT_CODE = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class StopFlag:
    """Records the first stop signal received; `install()` hooks the handlers."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        if self.signum is None:
            self.signum = signum

    def install(self) -> "StopFlag":
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.signum is not None
