"""make_shards --resume: after a real SIGKILL mid-run, and after shards were damaged, the
result is byte-identical to an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from data_fixtures import random_image, run_make_shards, save_png

REPO = Path(__file__).resolve().parents[2]
RESOLUTIONS = "128,64,32"


def tree_bytes(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.tar"))}


def sets_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["sets"]


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    source = tmp_path / "src"
    for i in range(240):
        save_png(source / f"{i:04d}.png", random_image(i, 128, 128))
    (source / "0100.png").write_bytes(b"")  # a rejection in the middle must survive the resume
    killed = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "data_tools.make_shards",
        "--source",
        str(source),
        "--out",
        str(killed),
        "--resolutions",
        RESOLUTIONS,
        "--shard-size",
        "3",
        "--workers",
        "1",
        "--no-progress",
    ]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 60
    while (
        not (killed / "progress.json").exists()
        and time.time() < deadline
        and process.poll() is None
    ):
        time.sleep(0.005)
    time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "manifest.json").exists(), "the run finished before it could be killed"
    done_before = len(json.loads((killed / "progress.json").read_text())["sets"]["32"]["shards"])
    assert 0 < done_before < 80
    assert run_make_shards(source, killed, RESOLUTIONS, 3, 1, "--resume") == 0
    assert run_make_shards(source, tmp_path / "fresh", RESOLUTIONS, 3, 1) == 0
    assert tree_bytes(killed) == tree_bytes(tmp_path / "fresh")
    assert sets_of(killed) == sets_of(tmp_path / "fresh")
    assert [r["path"] for r in json.loads((killed / "rejected.json").read_text())] == ["0100.png"]
    assert not (killed / "progress.json").exists() and not list(killed.rglob("*.tmp"))


def test_resume_rewrites_damaged_shards_and_keeps_intact_ones(tmp_path):
    for i in range(10):
        save_png(tmp_path / "src" / f"{i}.png", random_image(i, 16, 16))
    out = tmp_path / "out"
    assert run_make_shards(tmp_path / "src", out, "16,8", 3) == 0
    original = tree_bytes(out)
    kept = out / "8" / "shard-000000.tar"
    kept_mtime = kept.stat().st_mtime_ns
    damaged = out / "16" / "shard-000001.tar"
    damaged.write_bytes(damaged.read_bytes()[:700])
    (out / "8" / "shard-000002.tar").unlink()
    (out / "8" / "shard-000009.tar.tmp").write_bytes(b"left over by a killed run")
    assert run_make_shards(tmp_path / "src", out, "16,8", 3, 2, "--resume") == 0
    assert tree_bytes(out) == original and not list(out.rglob("*.tmp"))
    assert kept.stat().st_mtime_ns == kept_mtime  # verified shards are not rewritten


def test_resume_refuses_other_settings(tmp_path, capsys):
    for i in range(4):
        save_png(tmp_path / "src" / f"{i}.png", random_image(i, 8, 8))
    assert run_make_shards(tmp_path / "src", tmp_path / "out", "8,4", 2) == 0
    assert run_make_shards(tmp_path / "src", tmp_path / "out", "8,4", 3, 1, "--resume") == 2
    assert "fresh --out" in capsys.readouterr().err
