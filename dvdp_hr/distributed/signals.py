"""Preemption signals -> a flag the loop polls at step boundaries.

SIGTERM, SIGUSR1 and SIGUSR2 (Slurm's --signal, submitit's timeout signal, a scheduler's
preemption) ask the loop to checkpoint at the next step boundary and exit with
REQUEUE_EXIT_CODE = 75 (EX_TEMPFAIL of sysexits.h: "temporary failure, retry later"). Rerunning
the same command resumes. Under torchrun the agent itself exits 1 when a worker exits non-zero,
so launchers should also read RUN/status.json ({"state": "requeue"}).

Chaining. A handler installed before the flag (submitit's SIGUSR2 handler, which checkpoints the
job object, runs `scontrol requeue` and exits at once) is not replaced and not called from the
signal itself: that would exit before the trainer's collective checkpoint, and exit rank 0 alone
in the middle of a collective. The flag records it as *deferred*; the code that installed it calls
`forward_deferred()` once the trainer returned (its checkpoint published), which then runs it, or
`discard_deferred()` when the stop should not be forwarded (the run failed or finished).
"""
from __future__ import annotations

import signal

REQUEUE_EXIT_CODE = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

# (signum, handler installed before the flag) for stop signals received while a flag was installed
_deferred: list[tuple[int, object]] = []


def _chainable(handler) -> bool:
    return callable(handler) and handler is not signal.default_int_handler


class StopFlag:
    """Records the stop signals received; `install()` hooks the handlers, `uninstall()` restores
    the previous ones. Previous Python handlers are deferred (see the module docstring)."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the first stop signal received
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        if self.signum is None:
            self.signum = signum
        previous = self._previous.get(signum)
        if _chainable(previous) and all(s != signum for s, _ in _deferred):
            _deferred.append((signum, previous))

    def install(self) -> "StopFlag":
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.signum is not None


def deferred() -> list[tuple[int, object]]:
    """The (signum, handler) pairs waiting for `forward_deferred()`."""
    return list(_deferred)


def forward_deferred() -> int:
    """Run the handlers that were installed before the flag for the stop signals it received, in
    the order received; returns how many ran (a handler may also not return: submitit's exits)."""
    count = 0
    while _deferred:
        signum, handler = _deferred.pop(0)
        count += 1
        handler(signum, None)
    return count


def discard_deferred() -> None:
    _deferred.clear()
