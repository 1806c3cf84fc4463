"""inspect_shards: zero mismatches on a fresh set; a truncated or missing shard is reported by
name with a non-zero exit."""

import subprocess
import sys
from pathlib import Path

import pytest
from data_fixtures import make_shard_set

from data_tools import inspect_shards

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def shards(tmp_path):
    return make_shard_set(tmp_path, count=10, size=16, resolutions="16,8", shard_size=4)


def test_fresh_set_has_zero_mismatches(shards, capsys):
    assert inspect_shards.main([str(shards)]) == 0
    assert "inspect_shards: 0 mismatches" in capsys.readouterr().out


def test_truncated_shard_is_reported_and_fails(shards):
    victim = shards / "8" / "shard-000001.tar"
    victim.write_bytes(victim.read_bytes()[:1500])
    result = subprocess.run(
        [sys.executable, "data_tools/inspect_shards.py", str(shards)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    reported = [line for line in result.stdout.splitlines() if line.startswith("MISMATCH")]
    assert reported and all(str(victim) in line for line in reported)
    assert any("sha256" in line for line in reported)


def test_missing_shard_and_workers(shards, capsys):
    (shards / "16" / "shard-000002.tar").unlink()
    assert inspect_shards.main([str(shards), "--workers", "2", "--no-decode"]) == 1
    assert "shard-000002.tar: missing" in capsys.readouterr().out
