"""`dvdp-hr sample --variance-correction`: on needs band variances in the model's config (clear
error, exit 2); auto uses them when present and samples without them otherwise; off is the default."""
import os

from dvdp_hr.cli import main as cli
from sampling_helpers import tiny_export


def test_variance_correction_on_without_band_stats_names_the_fix(tmp_path, capsys):
    model = tiny_export(tmp_path / "model.safetensors")
    grid = str(tmp_path / "grid.png")
    args = ["sample", "--model", model, "--out", grid, "--count", "2", "--steps", "3", "--device", "cpu"]
    assert cli([*args, "--variance-correction", "on"]) == 2
    assert "schedule.band_stats.sigma_perp2" in capsys.readouterr().err
    assert not os.path.exists(grid)
    assert cli([*args, "--variance-correction", "auto"]) == 0 and os.path.isfile(grid)  # none: no correction
