"""make_shards: layouts (FFHQ tree, flat folder, zip, StyleGAN zip), sample format, exact box
averages, manifest, workers invariance, CLI entry points and source errors."""

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import (
    box_average_reference,
    encode,
    gradient_image,
    mixed_images,
    photo,
    random_image,
    run_make_shards,
    save_png,
    write_ffhq_tree,
)
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def read_tar(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def samples_of(out: Path, resolution: int) -> dict[str, dict]:
    """key -> {"png": decoded array, "png_bytes": bytes, "json": dict} over all shards of a set."""
    result = {}
    for shard in sorted((out / str(resolution)).glob("shard-*.tar")):
        for name, data in read_tar(shard):
            key, ext = name.split(".")
            entry = result.setdefault(key, {})
            if ext == "png":
                entry["png_bytes"], entry["png"] = data, np.asarray(Image.open(io.BytesIO(data)))
            else:
                entry["json"] = json.loads(data)
    return result


@pytest.fixture(scope="module")
def ffhq(tmp_path_factory):
    root = tmp_path_factory.mktemp("ffhq")
    images = mixed_images(10, 32)
    source = write_ffhq_tree(root, images)
    assert run_make_shards(source, root / "out", "32,16,8,4", 4) == 0
    return source, root / "out", images


def test_ffhq_layout_and_sample_format(ffhq):
    source, out, images = ffhq
    for resolution in (32, 16, 8, 4):
        names = sorted(p.name for p in (out / str(resolution)).iterdir())
        assert names == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
        samples = samples_of(out, resolution)
        assert list(samples) == [f"{i:08d}" for i in range(10)]
        for i, (key, sample) in enumerate(samples.items()):
            assert (
                sample["png"].shape == (resolution, resolution, 3)
                and sample["png"].dtype == np.uint8
            )
            assert sample["json"]["source"] == f"00000/{i:05d}.png"
            assert (sample["json"]["width"], sample["json"]["height"], sample["json"]["index"]) == (
                32,
                32,
                i,
            )
    first_tar = read_tar(out / "8" / "shard-000000.tar")
    assert [n for n, _ in first_tar][:4] == [
        "00000000.json",
        "00000000.png",
        "00000001.json",
        "00000001.png",
    ]


def test_full_resolution_keeps_source_bytes_and_lower_are_exact_box_averages(ffhq):
    source, out, images = ffhq
    full = samples_of(out, 32)
    for i, pixels in enumerate(images):
        assert full[f"{i:08d}"]["png_bytes"] == (source / "00000" / f"{i:05d}.png").read_bytes()
        for resolution in (16, 8, 4):
            stored = samples_of(out, resolution)[f"{i:08d}"]["png"]
            np.testing.assert_array_equal(stored, box_average_reference(pixels, 32 // resolution))


def test_manifest_lists_every_shard_with_checksums(ffhq):
    _, out, _ = ffhq
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["resolutions"] == [32, 16, 8, 4] and manifest["complete"]
    assert (manifest["num_found"], manifest["num_written"], manifest["num_rejected"]) == (10, 10, 0)
    assert manifest["args"]["shard_size"] == 4 and manifest["argv"][0] == "--source"
    for resolution in manifest["resolutions"]:
        entries = manifest["sets"][str(resolution)]["shards"]
        assert [e["samples"] for e in entries] == [4, 4, 2]
        for entry in entries:
            path = out / str(resolution) / entry["name"]
            assert entry["bytes"] == path.stat().st_size
            assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert json.loads((out / "rejected.json").read_text()) == []


def test_flat_folder_of_mixed_formats_with_crop_and_reject(tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    save_png(folder / "a.png", gradient_image(16, 16))
    (folder / "b.jpg").write_bytes(encode(photo("astronaut", 16), "JPEG"))
    (folder / "c.webp").write_bytes(encode(random_image(3, 24, 16), "WEBP"))  # portrait: cropped
    (folder / "notes.txt").write_text("not an image")
    assert run_make_shards(folder, tmp_path / "crop", "16,8", 2) == 0
    samples = samples_of(tmp_path / "crop", 16)
    assert [s["json"]["source"] for s in samples.values()] == ["a.png", "b.jpg", "c.webp"]
    assert samples["00000002"]["json"]["conversions"] == ["centre crop 16x24 to 16x16"]
    assert run_make_shards(folder, tmp_path / "reject", "8,4", 2, 1, "--on-mismatch", "reject") == 0
    rejected = json.loads((tmp_path / "reject" / "rejected.json").read_text())
    assert [r["path"] for r in rejected] == ["a.png", "b.jpg", "c.webp"]
    assert "expected 8x8" in rejected[0]["reason"]


def test_zip_and_stylegan_zip_give_the_same_shards_as_the_folder(tmp_path):
    images = mixed_images(5, 16)
    folder = tmp_path / "folder"
    for i, pixels in enumerate(images):
        save_png(folder / "00000" / f"img{i:08d}.png", pixels)
    plain, stylegan = tmp_path / "plain.zip", tmp_path / "stylegan.zip"
    with zipfile.ZipFile(plain, "w") as a, zipfile.ZipFile(stylegan, "w") as b:
        for path in sorted(folder.rglob("*.png")):
            a.write(path, path.relative_to(folder).as_posix())
            b.write(path, path.relative_to(folder).as_posix())
        labels = [[f"00000/img{i:08d}.png", i % 2] for i in range(5)]
        b.writestr("dataset.json", json.dumps({"labels": labels}))
    for name, source in (("folder", folder), ("plain", plain), ("stylegan", stylegan)):
        assert run_make_shards(source, tmp_path / name, "16,8", 2) == 0

    def shards(name, resolution):
        return [p.read_bytes() for p in sorted((tmp_path / name / str(resolution)).iterdir())]

    for resolution in (16, 8):
        assert shards("folder", resolution) == shards("plain", resolution)
    labelled = samples_of(tmp_path / "stylegan", 8)
    assert [s["json"]["label"] for s in labelled.values()] == [0, 1, 0, 1, 0]


def test_output_is_identical_for_1_and_4_workers(tmp_path):
    source = write_ffhq_tree(tmp_path, mixed_images(12, 32))
    assert run_make_shards(source, tmp_path / "w1", "32,16,8", 3, workers=1) == 0
    assert run_make_shards(source, tmp_path / "w4", "32,16,8", 3, workers=4) == 0
    files = sorted(p.relative_to(tmp_path / "w1") for p in (tmp_path / "w1").rglob("*.tar"))
    assert len(files) == 12
    for rel in files:
        assert (tmp_path / "w1" / rel).read_bytes() == (tmp_path / "w4" / rel).read_bytes()
    one, four = (json.loads((tmp_path / w / "manifest.json").read_text()) for w in ("w1", "w4"))
    assert (
        one["sets"] == four["sets"] and one["args"]["workers"] == 1 and four["args"]["workers"] == 4
    )


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "data_tools/make_shards.py", "--help"],
        [sys.executable, "-m", "data_tools.make_shards", "--help"],
    ],
)
def test_cli_entry_points_show_help(command):
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for flag in (
        "--source",
        "--out",
        "--resolutions",
        "--shard-size",
        "--num-shards",
        "--workers",
        "--resume",
        "--strict",
    ):
        assert flag in result.stdout


def test_missing_empty_and_wrong_sources_are_clear_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_make_shards(tmp_path / "nowhere", tmp_path / "o1") == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert run_make_shards(tmp_path / "empty", tmp_path / "o2") == 2
    assert "no images" in capsys.readouterr().err
    save_png(tmp_path / "one" / "x.png", gradient_image(8, 8))
    assert run_make_shards(tmp_path / "one", tmp_path / "o3", "8,3") == 2
    assert "power of two" in capsys.readouterr().err
    assert run_make_shards(tmp_path / "one", tmp_path / "o4", "8,4") == 0
    assert run_make_shards(tmp_path / "one", tmp_path / "o4", "8,4") == 2
    assert "--resume" in capsys.readouterr().err


def test_upscaled_images_are_counted_in_a_warning(tmp_path, capsys):
    folder = tmp_path / "small"
    folder.mkdir()
    save_png(folder / "a.png", gradient_image(8, 8))
    save_png(folder / "b.png", gradient_image(16, 16))
    assert run_make_shards(folder, tmp_path / "out", "16,8", 2) == 0
    assert "warning: 1 image(s) smaller than 16px were upscaled" in capsys.readouterr().out
    assert samples_of(tmp_path / "out", 16)["00000000"]["json"]["conversions"] == ["resize 8x8 to 16x16 (lanczos)"]


def make_shards_with(source: Path, out: Path, *flags: str) -> int:
    from data_tools.make_shards import main

    return main(["--source", str(source), "--out", str(out), "--resolutions", "16,8", "--no-progress", *flags])


def test_num_shards_derives_the_shard_size_and_is_recorded(tmp_path, capsys):
    source = write_ffhq_tree(tmp_path, mixed_images(10, 16))
    assert make_shards_with(source, tmp_path / "n", "--num-shards", "4", "--workers", "2") == 0  # size ceil(10/4)
    assert "4 shard(s) per resolution of 3 samples (--num-shards 4)" in capsys.readouterr().out
    assert make_shards_with(source, tmp_path / "s", "--shard-size", "3", "--workers", "1") == 0
    by_count, by_size = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("n", "s"))
    assert (by_count["shard_size"], by_count["num_shards"], by_count["requested_num_shards"]) == (3, 4, 4)
    assert by_size["requested_num_shards"] is None and by_count["sets"] == by_size["sets"]
    assert [e["samples"] for e in by_count["sets"]["8"]["shards"]] == [3, 3, 3, 1]
    for path in sorted((tmp_path / "s").rglob("*.tar")):  # the same bytes, whatever the spelling or workers
        assert (tmp_path / "n" / path.relative_to(tmp_path / "s")).read_bytes() == path.read_bytes()


def test_num_shards_counts_found_images_and_keeps_the_accounting(tmp_path, capsys):
    source = write_ffhq_tree(tmp_path, mixed_images(9, 16))
    save_png(source / "00000" / "00009.png", gradient_image(8, 12))  # rejected below: wrong size
    assert make_shards_with(source, tmp_path / "out", "--num-shards", "5", "--on-mismatch", "reject") == 0
    out = capsys.readouterr().out
    assert "found 10 = written 9 + rejected 1" in out and "5 shard(s) per resolution of 2 samples" in out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (manifest["num_found"], manifest["num_written"], manifest["num_rejected"]) == (10, 9, 1)
    assert [e["samples"] for e in manifest["sets"]["16"]["shards"]] == [2, 2, 2, 2, 1]


@pytest.mark.parametrize("flags, message", [
    (["--num-shards", "4", "--shard-size", "3"], "--shard-size 3 and --num-shards 4 both given: pass one"),
    (["--num-shards", "0"], "--num-shards 0: must be at least 1"),
])
def test_num_shards_errors_name_the_fix(tmp_path, capsys, flags, message):
    source = write_ffhq_tree(tmp_path, mixed_images(2, 16))
    assert make_shards_with(source, tmp_path / "out", *flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
