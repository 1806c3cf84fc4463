"""FID and KID: equal to clean-fid's own compute_fid / compute_kid on the same folders with the same
(local) feature network; reference statistics; folder and in-memory paths agree; missing weights."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dvdp_hr.cli import main
from dvdp_hr.metrics import fid as F
from dvdp_hr.metrics.errors import EvaluationError
from dvdp_hr.metrics.evaluate import FeatureJob, image_stats, source_stats
from dvdp_hr.metrics.features import INCEPTION_FILE, CleanInception, inception_path
from sampling_helpers import fake_inception, image_folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    return (image_folder(root / "ref", 40, seed=0), image_folder(root / "gen", 36, seed=1, shift=40),
            CleanInception(fake_inception(root / INCEPTION_FILE)), str(root / INCEPTION_FILE))


def test_fid_and_kid_equal_clean_fids_own(folders, monkeypatch):
    import cleanfid.fid as cf

    ref, gen, net, _ = folders
    expected = cf.compute_fid(ref, gen, custom_feat_extractor=net, device=torch.device("cpu"), num_workers=0,
                              batch_size=32, verbose=False)
    stats = {p: source_stats(FeatureJob(p, workers=0, keep_features=True), net, "cpu") for p in (ref, gen)}
    ours = F.frechet_distance(*stats[gen].mean_cov(), *stats[ref].mean_cov())
    assert expected > 0.1 and abs(ours - expected) < 1e-6, (ours, expected)
    monkeypatch.setattr(cf, "build_feature_extractor", lambda *a, **k: net)  # compute_kid takes no custom extractor
    np.random.seed(7)
    expected_kid = cf.compute_kid(ref, gen, device=torch.device("cpu"), num_workers=0, verbose=False)
    ours_kid = F.kernel_inception_distance(stats[ref].features(), stats[gen].features(), seed=7)
    assert abs(ours_kid - expected_kid) < 1e-9 and expected_kid != 0


def test_ref_stats_and_fid_commands(folders, tmp_path, capsys):
    ref, gen, _, weights = folders
    stats = str(tmp_path / "ref.npz")
    assert main(["ref-stats", "--shards", ref, "--out", stats, "--kid", "--inception", weights, "--workers", "0"]) == 0
    assert os.path.isfile(F.kid_path(stats))
    with np.load(stats) as data:
        assert data["mu"].shape == (16,) and data["sigma"].shape == (16, 16) and int(data["count"]) == 40
    out = tmp_path / "fid.json"
    assert main(["fid", "--images", gen, "--ref", stats, "--inception", weights, "--workers", "0",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    net = CleanInception(weights)
    g = source_stats(FeatureJob(gen, workers=0), net, "cpu")
    assert abs(result["fid"] - F.frechet_distance(*g.mean_cov(), *F.load_stats(stats))) < 1e-9
    assert result["count"] == 36 and result["kid"] > 0


def test_in_memory_images_score_like_their_pngs(folders):
    ref, _, net, _ = folders
    files = sorted(os.listdir(ref))
    images = {i: np.array(Image.open(os.path.join(ref, f)).convert("RGB")) for i, f in enumerate(files)}
    memory = image_stats(images, net, "cpu", batch=32).reduced(16)
    folder = source_stats(FeatureJob(ref, workers=0), net, "cpu")
    for a, b in zip(memory.mean_cov(), folder.mean_cov()):
        assert np.array_equal(a, b)  # the same bytes in the same batches: the same features


def test_missing_inception_weights_name_the_file_and_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DVDP_INCEPTION", raising=False)
    with pytest.raises(EvaluationError, match=rf"{INCEPTION_FILE}.*nvlabs.*--inception.*DVDP_INCEPTION"):
        inception_path(str(tmp_path / "nowhere.pt"))
    monkeypatch.setenv("DVDP_INCEPTION", str(tmp_path))  # a folder without the file
    with pytest.raises(EvaluationError, match="DVDP_INCEPTION"):
        inception_path(None)
    np.savez(tmp_path / "ref.npz", mu=np.zeros(2), sigma=np.eye(2))
    code = main(["fid", "--images", str(tmp_path), "--ref", str(tmp_path / "ref.npz"), "--inception",
                 str(tmp_path / "missing.pt")])
    assert code == 2 and INCEPTION_FILE in capsys.readouterr().err


def test_shards_give_the_features_of_their_source_images(tiny_shards, folders):
    net = CleanInception(folders[3])
    from_shards = source_stats(FeatureJob(str(tiny_shards), workers=0, resolution=64), net, "cpu")
    from_files = source_stats(FeatureJob(str(tiny_shards.parent / "images"), workers=0), net, "cpu")
    assert from_shards.count == from_files.count == 48
    for a, b in zip(from_shards.mean_cov(), from_files.mean_cov()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)  # other batches (shards of 12): rounding only
