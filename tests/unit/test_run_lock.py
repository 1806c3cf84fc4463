"""RUN/lock: fresh, held, and the three kinds of stale lock (dead pid, requeued job, old heartbeat)."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from dvdp_hr.distributed.lock import LockHeld, RunLock


def _plant(run_dir, **holder) -> str:
    """A lock file as another trainer would have left it."""
    path = os.path.join(run_dir, "lock")
    content = {"host": socket.gethostname(), "pid": os.getppid(), "slurm_job_id": None, "slurm_restart_count": 0,
               "started": "2026-01-01 00:00:00 UTC", "token": "other", **holder}
    with open(path, "w") as fh:
        json.dump(content, fh)
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(autouse=True)
def _no_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)


def test_fresh_lock_is_taken_beaten_and_released(tmp_path):
    lock = RunLock(str(tmp_path), stale_minutes=10, heartbeat_s=0.05)
    assert lock.acquire() is None
    holder = json.load(open(tmp_path / "lock"))
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    os.utime(tmp_path / "lock", (0, 0))
    time.sleep(0.3)
    assert time.time() - os.stat(tmp_path / "lock").st_mtime < 5  # the heartbeat touched it
    lock.release()
    assert not (tmp_path / "lock").exists()
    lock.release()  # idempotent


def test_a_live_holder_keeps_the_lock_and_the_message_names_it(tmp_path):
    path = _plant(str(tmp_path), pid=os.getppid(), slurm_job_id="77", slurm_restart_count=1)
    with pytest.raises(LockHeld) as err:
        RunLock(str(tmp_path), stale_minutes=10).acquire()
    text = str(err.value)
    assert f"pid {os.getppid()}" in text and "SLURM job 77 (restart 1)" in text
    assert f"delete {path}" in text and "checkpoint.lock_stale_minutes=10" in text
    assert json.load(open(path))["token"] == "other"  # untouched


def test_a_dead_process_on_this_host_is_stale(tmp_path):
    _plant(str(tmp_path), pid=_dead_pid())
    lock = RunLock(str(tmp_path), stale_minutes=10)
    note = lock.acquire()
    assert "taking over the stale run lock" in note and "is gone" in note
    assert lock.owned()
    lock.release()


def test_an_old_heartbeat_is_stale_even_from_another_host(tmp_path):
    path = _plant(str(tmp_path), host="elsewhere", pid=1)
    os.utime(path, (time.time() - 120, time.time() - 120))
    with pytest.raises(LockHeld):
        RunLock(str(tmp_path), stale_minutes=10).acquire()  # 2 min old: still held
    lock = RunLock(str(tmp_path), stale_minutes=1)
    assert "heartbeat stopped 2.0 min ago" in lock.acquire()
    lock.release()


def test_the_previous_attempt_of_a_requeued_job_is_stale(tmp_path, monkeypatch):
    _plant(str(tmp_path), host="elsewhere", pid=1, slurm_job_id="42", slurm_restart_count=0)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    with pytest.raises(LockHeld):  # the same attempt on another node: held
        RunLock(str(tmp_path), stale_minutes=10).acquire()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    lock = RunLock(str(tmp_path), stale_minutes=10)
    assert "previous attempt of requeued SLURM job 42" in lock.acquire()
    lock.release()


def test_a_lock_taken_over_behind_our_back_is_reported_and_left_alone(tmp_path):
    lock = RunLock(str(tmp_path), stale_minutes=10, heartbeat_s=0.05)
    lock.acquire()
    path = _plant(str(tmp_path), host="elsewhere", pid=1)
    deadline = time.time() + 5
    while lock.lost is None and time.time() < deadline:
        time.sleep(0.05)
    assert "taken over by host elsewhere" in lock.lost
    lock.release()
    assert json.load(open(path))["token"] == "other"
