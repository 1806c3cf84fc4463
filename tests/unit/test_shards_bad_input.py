"""make_shards on bad input: every file is either converted by a documented rule or rejected
and listed; found = written + rejected; --strict fails the run."""

import io
import json
import os

import numpy as np
import pytest
from data_fixtures import (
    encode,
    gradient_image,
    png_16bit_rgb,
    random_image,
    run_make_shards,
    save_png,
)
from PIL import Image

SIZE = 16


def bad_input_folder(root):
    """name -> bytes for each case (a broken symlink stands for an unreadable file)."""
    rgb = random_image(1, SIZE, SIZE)
    cases = {
        "00_good.png": encode(rgb, "PNG"),
        "01_corrupt.png": b"\x89PNG\r\n\x1a\n" + os.urandom(200),
        "02_truncated.png": encode(random_image(2, SIZE, SIZE), "PNG")[:300],
        "03_empty.png": b"",
        "04_cmyk.jpg": encode(random_image(3, SIZE, SIZE)[..., :3], "JPEG", None),
        "05_gray16.png": encode(
            (gradient_image(SIZE, SIZE)[..., 0].astype(np.uint16) * 257), "PNG"
        ),
        "06_rgb16.png": png_16bit_rgb(random_image(4, SIZE, SIZE).astype(np.uint16) * 256 + 200),
        "07_gray.png": encode(gradient_image(SIZE, SIZE)[..., 1], "PNG"),
        "08_rgba.png": encode(
            np.dstack([rgb, np.arange(SIZE * SIZE).reshape(SIZE, SIZE).astype(np.uint8)]), "PNG"
        ),
        "09_palette.png": None,
        "10_not_really.jpg": b"this is text, not a JPEG",
    }
    cmyk = io.BytesIO()
    Image.fromarray(random_image(3, SIZE, SIZE)).convert("CMYK").save(cmyk, format="JPEG")
    cases["04_cmyk.jpg"] = cmyk.getvalue()
    palette = io.BytesIO()
    Image.fromarray(gradient_image(SIZE, SIZE)).quantize(16).save(palette, format="PNG")
    cases["09_palette.png"] = palette.getvalue()
    root.mkdir()
    for name, data in cases.items():
        (root / name).write_bytes(data)
    (root / "11_unreadable.png").symlink_to(root / "does-not-exist.png")
    return cases


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    cases = bad_input_folder(root / "src")
    assert run_make_shards(root / "src", root / "out", f"{SIZE},8", 4) == 0
    return root, cases


def _written(out, resolution):
    import tarfile

    samples = {}
    for shard in sorted((out / str(resolution)).glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return {
        json.loads(s["json"])["source"]: (
            json.loads(s["json"]),
            np.asarray(Image.open(io.BytesIO(s["png"]))),
        )
        for s in samples.values()
    }


def test_every_file_is_written_or_rejected_with_a_reason(bad_run):
    root, _ = bad_run
    rejected = {
        r["path"]: r["reason"] for r in json.loads((root / "out" / "rejected.json").read_text())
    }
    assert set(rejected) == {
        "01_corrupt.png",
        "02_truncated.png",
        "03_empty.png",
        "04_cmyk.jpg",
        "10_not_really.jpg",
        "11_unreadable.png",
    }
    assert rejected["03_empty.png"] == "empty file"
    assert "CMYK" in rejected["04_cmyk.jpg"] and rejected["11_unreadable.png"].startswith(
        "unreadable"
    )
    assert rejected["02_truncated.png"].startswith("cannot decode")
    manifest = json.loads((root / "out" / "manifest.json").read_text())
    assert manifest["num_found"] == 12 == manifest["num_written"] + manifest["num_rejected"]
    assert manifest["num_written"] == 6


def test_conversion_rules(bad_run):
    root, cases = bad_run
    written = _written(root / "out", SIZE)
    gray16 = np.asarray(Image.open(io.BytesIO(cases["05_gray16.png"]))).astype(np.int64)
    meta, pixels = written["05_gray16.png"]
    np.testing.assert_array_equal(pixels, np.repeat((gray16 >> 8)[..., None], 3, axis=2))
    assert meta["conversions"] == ["16-bit to 8-bit (high byte)", "grayscale to RGB"]
    meta, pixels = written["06_rgb16.png"]
    np.testing.assert_array_equal(pixels, random_image(4, SIZE, SIZE))  # (v * 256 + 200) >> 8 == v
    assert meta["conversions"] == ["16-bit to 8-bit (high byte)"]
    meta, pixels = written["07_gray.png"]
    np.testing.assert_array_equal(
        pixels, np.repeat(gradient_image(SIZE, SIZE)[..., 1:2], 3, axis=2)
    )
    meta, pixels = written["08_rgba.png"]
    alpha = np.arange(SIZE * SIZE).reshape(SIZE, SIZE, 1).astype(np.int64)
    expected = np.floor((random_image(1, SIZE, SIZE) * alpha + 255 * (255 - alpha)) / 255 + 0.5)
    np.testing.assert_array_equal(pixels, expected.astype(np.uint8))
    assert meta["conversions"] == ["alpha composited on white"]
    assert written["09_palette.png"][0]["conversions"] == ["palette to RGB"]
    assert written["00_good.png"][0]["conversions"] == []


def test_real_rgba_photo_is_composited(tmp_path):
    import skimage.data

    logo = skimage.data.logo()  # RGBA, 500x500, transparent background
    save_png(tmp_path / "src" / "logo.png", logo)
    assert run_make_shards(tmp_path / "src", tmp_path / "out", "50,25", 1) == 0
    meta, pixels = _written(tmp_path / "out", 50)["logo.png"]
    assert "alpha composited on white" in meta["conversions"] and pixels.shape == (50, 50, 3)
    assert (pixels[0, 0] == 255).all()  # transparent corner -> white


def test_strict_fails_the_run_and_still_lists_rejections(tmp_path, capsys):
    save_png(tmp_path / "src" / "a.png", gradient_image(8, 8))
    (tmp_path / "src" / "b.png").write_bytes(b"")
    assert run_make_shards(tmp_path / "src", tmp_path / "out", "8,4", 4, 1, "--strict") == 1
    assert "--strict" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "rejected.json").read_text())[0]["path"] == "b.png"
    assert not (tmp_path / "out" / "manifest.json").exists()
