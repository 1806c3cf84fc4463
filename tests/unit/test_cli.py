"""The `dvdp-hr` command line as a user types it: delegation, errors as messages with exit code 2."""
import json

import pytest

from dvdp_hr import load_pretrained
from dvdp_hr.cli import main as cli
from dvdp_hr.export import ExportError
from dvdp_hr.train.demo_data import make_image_folder


def test_make_shards_subcommand_takes_every_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as help_exit:
        cli(["make-shards", "--help"])
    assert help_exit.value.code == 0 and "--source" in capsys.readouterr().out
    make_image_folder(str(tmp_path / "images"), count=6, size=16, seed=0)
    assert cli(["make-shards", "--source", str(tmp_path / "images"), "--out", str(tmp_path / "shards"),
                "--resolutions", "16,8", "--shard-size", "4", "--workers", "1", "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert sorted(int(r) for r in manifest["resolutions"]) == [8, 16]


def test_unknown_checkpoint_tag_is_a_clean_error(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    assert cli(["export", "--run-dir", str(tmp_path), "--checkpoint", "nope", "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "nope" in capsys.readouterr().err


def test_load_pretrained_on_a_run_directory_says_what_to_do(tmp_path):
    with pytest.raises(ExportError, match="dvdp-hr export --run-dir"):
        load_pretrained(str(tmp_path))
