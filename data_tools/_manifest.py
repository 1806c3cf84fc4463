"""manifest.json / progress.json / rejected.json for make_shards, and the resume logic.

progress.json is a partial manifest rewritten after every completed shard group; --resume keeps
the longest prefix of groups whose files all match their recorded size and sha256, deletes
everything after it, and restarts from the source index following that prefix's last sample."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ._shard_writer import shard_is_intact

MANIFEST, PROGRESS, REJECTED = "manifest.json", "progress.json", "rejected.json"
FORMAT = "dvdp_hr.shards/v1"


@dataclass
class RunState:
    sets: dict[int, list[dict]]  # resolution -> shard entries, in order
    rejected: list[dict] = field(default_factory=list)
    next_index: int = 0  # first source index not yet processed


def write_json_atomic(path: Path, payload) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _has_shards(out: Path) -> bool:
    return any(out.glob("*/shard-*.tar*")) or (out / MANIFEST).exists() or (out / PROGRESS).exists()


def fresh_state(out: Path, resolutions: tuple[int, ...]) -> RunState:
    if out.exists() and _has_shards(out):
        raise ValueError(
            f"--out {out} already holds shards: pass --resume to continue that run, "
            "or choose an empty folder"
        )
    return RunState({r: [] for r in resolutions})


def _intact_groups(out: Path, record: dict, resolutions: tuple[int, ...]) -> int:
    sets = record["sets"]
    count = min(len(sets[str(r)]["shards"]) for r in resolutions)
    for group in range(count):
        for r in resolutions:
            entry = sets[str(r)]["shards"][group]
            if not shard_is_intact(out / str(r) / entry["name"], entry):
                return group
    return count


def _remove_after(out: Path, resolutions: tuple[int, ...], kept: int) -> None:
    for r in resolutions:
        for path in (out / str(r)).glob("shard-*.tar*"):
            stem = path.name.removeprefix("shard-").split(".")[0]
            if path.name.endswith(".tmp") or not stem.isdigit() or int(stem) >= kept:
                path.unlink()


def resume_state(out: Path, identity: dict, resolutions: tuple[int, ...]) -> RunState:
    """State to continue from: verified shard groups kept, the rest deleted."""
    record_path = out / PROGRESS if (out / PROGRESS).exists() else out / MANIFEST
    if not record_path.exists():
        if _has_shards(out):
            raise ValueError(
                f"--resume: {out} holds shards but no {PROGRESS} or {MANIFEST}; "
                "delete the folder and start again"
            )
        return RunState({r: [] for r in resolutions})
    record = json.loads(record_path.read_text())
    if record.get("identity") != identity:
        raise ValueError(
            f"--resume: {record_path} was made from other inputs or settings "
            f"({record.get('identity')} vs {identity}); use a fresh --out"
        )
    kept = _intact_groups(out, record, resolutions)
    _remove_after(out, resolutions, kept)
    sets = {r: record["sets"][str(r)]["shards"][:kept] for r in resolutions}
    next_index = int(sets[resolutions[0]][-1]["last_key"]) + 1 if kept else 0
    rejected = [item for item in record["rejected"] if item["index"] < next_index]
    return RunState(sets, rejected, next_index)


def record_payload(identity: dict, state: RunState, complete: bool, extra: dict) -> dict:
    """The manifest (complete=True) or progress record; both resume the same way."""
    sets = {
        str(r): {
            "shards": entries,
            "num_samples": sum(e["samples"] for e in entries),
            "bytes": sum(e["bytes"] for e in entries),
        }
        for r, entries in state.sets.items()
    }
    written = sets[str(identity["resolutions"][0])]["num_samples"]
    return {
        "format": FORMAT,
        "complete": complete,
        "identity": identity,
        "resolutions": identity["resolutions"],
        "full_resolution": identity["resolutions"][0],
        "shard_size": identity["shard_size"],
        "num_shards": len(state.sets[identity["resolutions"][0]]),
        "num_found": identity["num_found"],
        "num_written": written,
        "num_rejected": len(state.rejected),
        "total_bytes": sum(s["bytes"] for s in sets.values()),
        "sets": sets,
        "rejected": state.rejected,
        **extra,
    }
