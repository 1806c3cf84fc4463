"""Detail-band variances (dvdp-math.md s8): exact oracles for the tensor function, and the
band_stats CLI on a shard set against the same function on the source pixels."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from data_fixtures import make_shard_set, mixed_images

from data_tools import band_stats as band_stats_cli
from dvdp_hr.data import BandStats, band_variances


def test_band_energies_and_root_energy_add_up_to_the_image_energy():
    # Parseval for the orthonormal pyramid: ||z0||^2 = sum_k ||Q' z_k||^2 + ||z_K||^2, z_k = 2^k x_k
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64) * 2 - 1
    result = band_variances(x, 4)
    band_energy = sum(
        b["var_orthonormal"] * 0.75 * x.numel() / 4 ** b["stage"] for b in result["bands"]
    )
    root = F.avg_pool2d(x, 8)
    assert band_energy + (4**3) * root.square().sum().item() == pytest.approx(
        x.square().sum().item(), rel=1e-12
    )
    assert result["resolutions"] == [32, 16, 8, 4] and result["num_images"] == 3
    assert [(b["from"], b["to"], b["stage"]) for b in result["bands"]] == [
        (32, 16, 0),
        (16, 8, 1),
        (8, 4, 2),
    ]


def test_checkerboard_lives_in_the_finest_band_only():
    amplitude = 0.3
    checker = (
        amplitude * (1 - 2 * ((torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2)).double()
    )
    x = (0.1 + checker).expand(2, 3, 8, 8)
    bands = band_variances(x, 2)["bands"]
    assert bands[0]["var_pixel"] == pytest.approx(amplitude**2 / 0.75, rel=1e-12)
    assert bands[1]["var_pixel"] == pytest.approx(0.0, abs=1e-15)


def test_white_noise_has_the_same_orthonormal_variance_in_every_band():
    x = (
        torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        * 2
        - 1
    )
    for band in band_variances(x, 8)["bands"]:  # uniform[-1, 1]: variance 1/3 per coordinate
        assert band["var_orthonormal"] == pytest.approx(1 / 3, rel=0.1)


def test_accumulating_batches_equals_one_pass():
    x = torch.rand(6, 3, 16, 16, dtype=torch.float64)
    stats = BandStats(16, 4)
    stats.update(x[:2])
    stats.update(x[2:])
    split, whole = stats.result(), band_variances(x, 4)
    for a, b in zip(split["bands"], whole["bands"]):
        assert a["var_pixel"] == pytest.approx(b["var_pixel"], rel=1e-12)
    assert split["num_images"] == whole["num_images"] == 6
    with pytest.raises(ValueError, match="power-of-two"):
        BandStats(16, 16)


def test_cli_writes_band_stats_json_matching_the_source_pixels(tmp_path, capsys):
    shards = make_shard_set(tmp_path, count=9, size=32, resolutions="32,16,8", shard_size=4)
    assert band_stats_cli.main([str(shards)]) == 0
    written = json.loads((shards / "band_stats.json").read_text())
    pixels = (
        torch.from_numpy(np.stack(mixed_images(9, 32))).permute(0, 3, 1, 2).double() / 127.5 - 1
    )
    expected = band_variances(pixels, 8)
    assert written["num_images"] == 9 and written["resolutions"] == [32, 16, 8]
    for got, want in zip(written["bands"], expected["bands"]):
        assert got["var_orthonormal"] == pytest.approx(want["var_orthonormal"], rel=1e-12)
        assert got["var_orthonormal"] == pytest.approx(
            4 ** got["stage"] * got["var_pixel"], rel=1e-12
        )
    assert written["manifest_sha256"] and "stage 1" in capsys.readouterr().out
    assert band_stats_cli.main([str(shards), "--max-images", "5"]) == 0
    assert json.loads((shards / "band_stats.json").read_text())["num_images"] == 5
