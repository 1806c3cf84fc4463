"""Sampling and metrics over 2 gloo ranks (torchrun, CPU) against one process: bitwise identical
images per seed, a killed run completed by a rerun (no missing or duplicate seed), and FID, KID and
SWD equal for 1 and 2 ranks."""
import io
import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from dvdp_hr.cli import main
from dvdp_hr.sampling import outdir as od
from launch import REPO, launch_env, run_checked, torchrun_cmd
from sampling_helpers import fake_inception, image_folder, one_thread, tiny_export

SEEDS, COUNT = "0-11", 12
SAMPLE = ["--seeds", SEEDS, "--batch", "2", "--steps", "6", "--method", "ancestral", "--progress-seconds", "0"]


def _cli(*args) -> list[str]:
    return torchrun_cmd(["-m", "dvdp_hr.cli", *args])


def _images(folder) -> dict[int, np.ndarray]:
    """seed -> pixels of a sample folder, from PNGs and shards; fails on a duplicate seed."""
    out = {}
    for name in sorted(os.listdir(folder)):
        members = od.shard_members(os.path.join(folder, name)) if name.endswith(".tar") else (
            [(name, open(os.path.join(folder, name), "rb").read())] if name.endswith(".png") else [])
        for member, data in members:
            seed = int(member[len("seed"):-len(".png")])
            assert seed not in out, f"seed {seed} twice"
            out[seed] = np.array(Image.open(io.BytesIO(data)))
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_export(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def one_rank(model, tmp_path_factory):
    """One rank under the same launcher (and so the same thread count: CPU kernels split their sums
    by thread, which can move a pixel by one step; ranks do not)."""
    folder = tmp_path_factory.mktemp("one") / "samples"
    run_checked(torchrun_cmd(["-m", "dvdp_hr.cli", "sample", "--model", model, "--outdir", str(folder), *SAMPLE],
                             nproc=1))
    return _images(folder)


@pytest.mark.slow
def test_two_ranks_draw_the_same_images_bitwise(model, one_rank, tmp_path):
    run_checked(_cli("sample", "--model", model, "--outdir", str(tmp_path / "two"), *SAMPLE))
    two = _images(tmp_path / "two")
    assert sorted(two) == sorted(one_rank) == list(range(COUNT))
    assert all(np.array_equal(two[s], one_rank[s]) for s in range(COUNT))


@pytest.mark.slow
def test_a_killed_run_is_completed_by_a_rerun(model, one_rank, tmp_path):
    folder = str(tmp_path / "killed")
    args = ["sample", "--model", model, "--outdir", folder, *SAMPLE, "--shards", "5"]
    probe = torchrun_cmd([str(REPO / "tests" / "integration" / "probe_sample_kill.py"), *args])
    killed = subprocess.run(probe, env=launch_env(PROBE_WRITES="3"), cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode != 0
    left = od.finished_seeds(folder, list(range(COUNT)))
    assert 0 < len(left) < COUNT, left  # killed midway: part of the set is there
    rerun = run_checked(_cli(*args))
    assert "already in" in rerun.stdout and "complete: 12 images" in rerun.stdout
    resumed = _images(folder)
    assert sorted(os.listdir(folder)) == ["samples.json", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert sorted(resumed) == list(range(COUNT))  # no missing, no duplicate seed (_images checks)
    assert all(np.array_equal(resumed[s], one_rank[s]) for s in range(COUNT))  # bitwise the uninterrupted set


@pytest.mark.slow
def test_fid_kid_and_swd_are_the_same_for_one_and_two_ranks(tmp_path):
    ref, gen = image_folder(tmp_path / "ref", 24, seed=0), image_folder(tmp_path / "gen", 22, seed=1, shift=30)
    weights = fake_inception(tmp_path / "inception-2015-12-05.pt")
    stats = str(tmp_path / "ref.npz")
    assert main(["ref-stats", "--shards", ref, "--out", stats, "--kid", "--inception", weights, "--workers", "0",
                 "--batch", "4"]) == 0
    common = ["--images", gen, "--ref", stats, "--inception", weights, "--workers", "0", "--batch", "4"]
    swd = ["swd", "--images", gen, "--ref-images", ref, "--count", "20", "--per-image", "16", "--batch", "4"]
    with one_thread():
        assert main(["fid", *common, "--json", str(tmp_path / "one.json")]) == 0
        assert main([*swd, "--json", str(tmp_path / "swd1.json")]) == 0
    run_checked(_cli("fid", *common, "--json", str(tmp_path / "two.json")))
    run_checked(_cli(*swd, "--json", str(tmp_path / "swd2.json")))
    one, two = (json.loads((tmp_path / n).read_text()) for n in ("one.json", "two.json"))
    assert two["world_size"] == 2 and one["count"] == two["count"] == 22
    assert abs(one["fid"] - two["fid"]) < 1e-9 and one["kid"] == two["kid"]
    swd1, swd2 = (json.loads((tmp_path / n).read_text()) for n in ("swd1.json", "swd2.json"))
    assert swd1["swd_mean"] > 0 and abs(swd1["swd_mean"] - swd2["swd_mean"]) < 1e-9
