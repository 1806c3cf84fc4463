"""RUN/lock: one trainer per run directory.

Rank 0 creates the file with O_CREAT | O_EXCL at start (JSON: host, pid, SLURM job id and restart
count, start time, a random token), touches its mtime every `heartbeat_s` seconds from a daemon
thread and removes it at exit. A lock left behind is stale, and taken over with a printed note,
when it names
  - this host and a process that no longer runs,
  - this SLURM job at a lower restart count (the previous attempt of a requeued job), or
  - nothing newer than `stale_minutes` ago (its heartbeat stopped: a node that died).
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import threading
import time
import uuid

LOCK_FILE = "lock"
HEARTBEAT_SECONDS = 30.0


class LockHeld(RuntimeError):
    pass


def identity() -> dict:
    env = os.environ
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": env.get("SLURM_JOB_ID"),
            "slurm_restart_count": int(env.get("SLURM_RESTART_COUNT") or 0),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "token": uuid.uuid4().hex}


def describe(holder: dict) -> str:
    text = f"host {holder.get('host')}, pid {holder.get('pid')}"
    if holder.get("slurm_job_id"):
        text += f", SLURM job {holder['slurm_job_id']} (restart {holder.get('slurm_restart_count', 0)})"
    return text + f", started {holder.get('started')}"


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True  # another user's process, or no pid to judge by
    return True


def stale_reason(holder: dict, age_s: float, me: dict, stale_s: float) -> str | None:
    """Why the lock `holder` (heartbeat `age_s` seconds old) may be taken over by `me`, or None."""
    if holder.get("host") == me["host"] and (holder.get("pid") == me["pid"] or not _alive(holder.get("pid"))):
        return f"process {holder.get('pid')} on {me['host']} is gone"
    job = holder.get("slurm_job_id")
    if job and job == me["slurm_job_id"] and int(holder.get("slurm_restart_count", 0)) < me["slurm_restart_count"]:
        return f"it is the previous attempt of requeued SLURM job {job}"
    if age_s > stale_s:
        return f"its heartbeat stopped {age_s / 60:.1f} min ago (checkpoint.lock_stale_minutes={stale_s / 60:g})"
    return None


class RunLock:
    def __init__(self, run_dir: str, stale_minutes: float, heartbeat_s: float = HEARTBEAT_SECONDS):
        self.run_dir, self.path = run_dir, os.path.join(run_dir, LOCK_FILE)
        self.stale_s, self.heartbeat_s = 60.0 * stale_minutes, heartbeat_s
        self.me, self.lost = identity(), None
        self._content = json.dumps(self.me, indent=1).encode()
        self._stop, self._thread = threading.Event(), None

    # ---- taking the lock ----
    def acquire(self) -> str | None:
        """Take the lock; returns a note if a stale lock was taken over; raises LockHeld."""
        try:
            self._create()
            return None
        except FileExistsError:
            pass
        seen, holder, age = self._read()
        reason = stale_reason(holder, age, self.me, self.stale_s)
        if reason is None:
            raise LockHeld(self._held_message(holder, age))
        self._take_over(seen)
        return f"taking over the stale run lock {self.path} ({describe(holder)}): {reason}"

    def _create(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self._content)
            fh.flush()
            os.fsync(fh.fileno())
        self._start_heartbeat()

    def _read(self) -> tuple[bytes, dict, float]:
        """(raw content, parsed holder, heartbeat age in seconds) of the lock file."""
        try:
            with open(self.path, "rb") as fh:
                seen = fh.read()
            age = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return b"", {}, float("inf")
        try:
            holder = json.loads(seen)
        except ValueError:
            holder = {}  # cut short while being written: judged by its heartbeat alone
        return seen, holder if isinstance(holder, dict) else {}, age

    def _take_over(self, seen: bytes) -> None:
        """Replace the stale lock whose content was `seen`; if another trainer got there first,
        leave its lock in place and raise LockHeld."""
        claim = f"{self.path}.takeover-{self.me['token']}"
        try:
            os.rename(self.path, claim)  # only one of several racing successors gets the stale file
        except FileNotFoundError:
            pass
        else:
            with open(claim, "rb") as fh:
                grabbed = fh.read()
            if grabbed != seen:  # a fresh lock appeared after we read the stale one: put it back
                os.link(claim, self.path)
                os.unlink(claim)
                self._raise_held()
            os.unlink(claim)
        try:
            self._create()
        except FileExistsError:
            self._raise_held()

    def _raise_held(self) -> None:
        _, holder, age = self._read()
        raise LockHeld(self._held_message(holder, age))

    def _held_message(self, holder: dict, age: float) -> str:
        return (f"{self.run_dir} is in use by another trainer ({describe(holder)}; heartbeat {age:.0f} s ago, "
                f"{self.path}). Two trainers on one run directory would overwrite each other's checkpoints: "
                f"let that one finish or stop it, or train into another --run-dir. If it is gone (e.g. killed "
                f"on another node), delete {self.path}, or rerun once its heartbeat is older than "
                f"checkpoint.lock_stale_minutes={self.stale_s / 60:g}.")

    # ---- holding it ----
    def _start_heartbeat(self) -> None:
        atexit.register(self.release)  # also when the trainer's constructor fails after this point
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.owned():
                _, holder, _ = self._read()
                self.lost = f"{self.path} was taken over by {describe(holder) if holder else 'nobody'}"
                return
            try:
                os.utime(self.path)
            except OSError:
                pass  # a filesystem hiccup: the next beat tries again (stale only after lock_stale_minutes)

    def owned(self) -> bool:
        try:
            with open(self.path, "rb") as fh:
                return fh.read() == self._content
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self._thread is not None and self.owned():
            os.unlink(self.path)
        self._thread = None
        atexit.unregister(self.release)
