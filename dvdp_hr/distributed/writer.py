"""One checkpoint job at a time, in a background thread or inline.

A job's exception is kept and re-raised by the next `join()` (never lost, never half-handled in
the thread), so the caller decides where it surfaces. The thread is not a daemon: an interpreter
that exits without joining still waits for the checkpoint being published.
"""
from __future__ import annotations

import threading
from typing import Callable


class WriterError(RuntimeError):
    pass


class BackgroundWriter:
    def __init__(self, background: bool):
        self.background = background
        self._thread: threading.Thread | None = None
        self._failure: tuple[str, BaseException] | None = None

    def submit(self, name: str, job: Callable[[], None]) -> None:
        """Run `job` (named `name` in errors); first waits for the previous one."""
        self.join()
        if not self.background:
            self._run(name, job)
            return
        self._thread = threading.Thread(target=self._run, args=(name, job), name=f"checkpoint-writer {name}")
        self._thread.start()

    def _run(self, name: str, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as err:  # noqa: BLE001 - handed to join(), which re-raises it
            self._failure = (name, err)

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self) -> None:
        """Wait for the job in flight; raise WriterError if it (or an earlier one) failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._failure is not None:
            (name, err), self._failure = self._failure, None
            raise WriterError(f"writing checkpoint {name} failed: {type(err).__name__}: {err}") from err
