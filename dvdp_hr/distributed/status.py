"""RUN/status.json: what the CURRENT attempt of a run is doing, or how it ended.

Every attempt overwrites it at its start ("running") and at its end, so a launcher decides from the
current attempt alone (a stale "requeue" of an earlier attempt can never cause another requeue):

    {"state": "running" | "finished" | "requeue" | "failed",
     "reason": "ConfigError: ..." | "exit code 1" | null,   # failed only
     "exit_code": 2 | null, "attempt": "slurm-1234.3", "job_id": "1234", "restart_count": 3,
     "world_size": 64, "host": "gpu017", "pid": 4242, "started_at": "...", "time": "...",
     "step": ..., "images": ...}                               # counters, when the trainer wrote them

"requeue" means: this attempt published a checkpoint after a stop signal and asks to be run again
(exit code 75). Only rank 0 writes; writes are atomic (temporary file, fsync, rename).
Importing this module imports neither torch nor DeepSpeed: the sbatch script calls
`python -m dvdp_hr.distributed.status {show,state,write} RUN ...`.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import uuid

from dvdp_hr.distributed.signals import REQUEUE_EXIT_CODE
from dvdp_hr.distributed.integrity import write_atomic

STATUS_FILE = "status.json"
STATES = ("running", "finished", "requeue", "failed")
MAX_REASON = 4000

_process_attempt: dict = {}


def status_path(run_dir: str) -> str:
    return os.path.join(run_dir, STATUS_FILE)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def attempt_id(env=None) -> str:
    """One id per attempt: a Slurm job attempt is (job id, restart count), shared by the batch
    script and every rank; anything else is this process."""
    env = os.environ if env is None else env
    if env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}.{env.get('SLURM_RESTART_COUNT') or 0}"
    if not _process_attempt:
        _process_attempt["id"] = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return _process_attempt["id"]


def read_status(run_dir: str) -> dict | None:
    """The recorded status, or None when there is none (or it cannot be parsed)."""
    try:
        with open(status_path(run_dir)) as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def state_for_exit_code(code: int | None) -> str:
    if code in (0, None):
        return "finished"
    return "requeue" if code == REQUEUE_EXIT_CODE else "failed"


def write_status(run_dir: str, state: str, *, reason: str | None = None, exit_code: int | None = None,
                 world_size: int | None = None, barrier: bool = False, **extra) -> dict | None:
    """Record `state` for the current attempt (rank 0 writes; the others return None). Fields an
    earlier write of the SAME attempt recorded (counters, world size, start time) are kept.
    barrier=True: every rank calls it, and none returns before rank 0's file is on disk (so an
    `srun --kill-on-bad-exit` cannot kill rank 0 before it recorded a requeue)."""
    from dvdp_hr.distributed import env as dist_env

    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, not {state!r}")
    record = None
    if dist_env.current().rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        ident = attempt_id()
        previous = read_status(run_dir) or {}
        same = previous.get("attempt") == ident
        ended = ("state", "reason", "exit_code", "time")
        record = {k: v for k, v in previous.items() if k not in ended} if same else {}
        environ = os.environ
        record.update({
            "state": state, "reason": None if reason is None else str(reason)[:MAX_REASON], "exit_code": exit_code,
            "attempt": ident, "job_id": environ.get("SLURM_JOB_ID") or record.get("job_id"),
            "restart_count": int(environ.get("SLURM_RESTART_COUNT") or 0), "host": socket.gethostname(),
            "pid": os.getpid(), "started_at": record.get("started_at") or _now(), "time": _now(),
        })
        if world_size is not None:
            record["world_size"] = int(world_size)
        record.setdefault("world_size", dist_env.current().world_size)
        record.update(extra)
        write_atomic(status_path(run_dir), json.dumps(record, indent=1, sort_keys=True) + "\n")
    if barrier:
        dist_env.barrier()
    return record


def failure_reason(exc: BaseException) -> str:
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class Attempt:
    """status.json for one command: "running" on entry, then `done(exit_code)` records finished /
    requeue / failed ("exit code N"); an exception leaving the block records "failed" with its
    type and message (and is re-raised).

        with Attempt(run_dir) as attempt:
            return attempt.done(train(cfg, run_dir))
    """

    def __init__(self, run_dir: str, world_size: int | None = None):
        self.run_dir, self.world_size = run_dir, world_size
        self.exit_code: int | None = None

    def __enter__(self) -> "Attempt":
        write_status(self.run_dir, "running", world_size=self.world_size)
        return self

    def done(self, exit_code: int) -> int:
        self.exit_code = exit_code
        state = state_for_exit_code(exit_code)
        write_status(self.run_dir, state, exit_code=exit_code,
                     reason=f"exit code {exit_code}" if state == "failed" else None)
        return exit_code

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or self.exit_code is not None:
            return False
        if isinstance(exc, SystemExit):
            code = exc.code if isinstance(exc.code, int) or exc.code is None else 1
            self.done(code or 0)
        else:
            write_status(self.run_dir, "failed", reason=failure_reason(exc))
        return False


# ---- `python -m dvdp_hr.distributed.status` (the sbatch script's reader and writer) ----
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dvdp_hr.distributed.status", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("show", help="print RUN/status.json")
    p.add_argument("run_dir")
    p = sub.add_parser("state", help="print the recorded state (empty when none)")
    p.add_argument("run_dir")
    p.add_argument("--this-attempt", action="store_true",
                   help="print 'stale' when the record belongs to another attempt than this environment's")
    p = sub.add_parser("write", help="record a state for the current attempt")
    p.add_argument("run_dir")
    p.add_argument("state", choices=STATES)
    p.add_argument("--reason")
    p.add_argument("--exit-code", type=int)
    p.add_argument("--world-size", type=int)
    args = parser.parse_args(argv)
    record = read_status(args.run_dir)
    if args.command == "show":
        print(json.dumps(record, indent=1, sort_keys=True) if record else "{}")
    elif args.command == "state":
        if record is None:
            print("")
        elif args.this_attempt and record.get("attempt") != attempt_id():
            print("stale")
        else:
            print(record.get("state", ""))
    else:
        write_status(args.run_dir, args.state, reason=args.reason, exit_code=args.exit_code,
                     world_size=args.world_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
