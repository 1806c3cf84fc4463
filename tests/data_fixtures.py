"""Images and shard sets made by the tests themselves (random noise, gradients, and
scikit-image's bundled photographs), shared by tests/unit/test_shards*.py and test_loader*.py."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from data_tools import make_shards

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def random_image(seed: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def gradient_image(height: int, width: int, phase: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [
            (x * 255 // max(1, width - 1) + phase) % 256,
            y * 255 // max(1, height - 1),
            (x + y + phase) % 256,
        ],
        axis=-1,
    ).astype(np.uint8)


def photo(name: str, size: int) -> np.ndarray:
    """A scikit-image sample photograph, centre-cropped and resized to size x size."""
    import skimage.data

    pixels = getattr(skimage.data, name)()
    side = min(pixels.shape[:2])
    top, left = (pixels.shape[0] - side) // 2, (pixels.shape[1] - side) // 2
    square = Image.fromarray(pixels[top : top + side, left : left + side])
    return np.asarray(square.resize((size, size), Image.BICUBIC))


def mixed_images(count: int, size: int) -> list[np.ndarray]:
    """Noise, gradients and photos in a fixed rotation, all distinct (photos are rolled by i)."""
    makers = [
        lambda i: random_image(i, size, size),
        lambda i: gradient_image(size, size, i),
        lambda i: np.roll(photo(PHOTOS[i % len(PHOTOS)], size), i, axis=1),
    ]
    return [makers[i % 3](i) for i in range(count)]


def save_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")
    return path


def write_ffhq_tree(root: Path, images: list[np.ndarray]) -> Path:
    """FFHQ's layout: root/images1024x1024/NNN00/NNNNN.png, 1000 files per folder."""
    folder = root / "images1024x1024"
    for i, pixels in enumerate(images):
        save_png(folder / f"{i // 1000 * 1000:05d}" / f"{i:05d}.png", pixels)
    return folder


def png_16bit_rgb(pixels16: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG written by hand (PIL cannot write one)."""
    height, width, _ = pixels16.shape
    rows = b"".join(b"\x00" + pixels16[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def encode(pixels: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format=fmt)
    return buffer.getvalue()


def run_make_shards(
    source: Path,
    out: Path,
    resolutions: str = "32,16,8",
    shard_size: int = 4,
    workers: int = 1,
    *extra: str,
) -> int:
    return make_shards.main(
        [
            "--source",
            str(source),
            "--out",
            str(out),
            "--resolutions",
            resolutions,
            "--shard-size",
            str(shard_size),
            "--workers",
            str(workers),
            "--no-progress",
            *extra,
        ]
    )


def make_shard_set(
    root: Path, count: int = 20, size: int = 32, resolutions: str = "32,16,8", shard_size: int = 4
) -> Path:
    """A finished shard folder of `count` mixed images; returns its path."""
    source = write_ffhq_tree(root / "src", mixed_images(count, size))
    out = root / "shards"
    assert run_make_shards(source, out, resolutions, shard_size) == 0
    return out


def box_average_reference(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Independent float64 reference: block mean, rounded half up."""
    h, w, c = pixels.shape
    means = (
        pixels.astype(np.float64)
        .reshape(h // factor, factor, w // factor, factor, c)
        .mean(axis=(1, 3))
    )
    return np.floor(means + 0.5).astype(np.uint8)


def stored_images(shards: Path, resolution: int) -> dict[bytes, str]:
    """uint8 image bytes -> key over every sample of one resolution set (identifies outputs)."""
    import tarfile

    found = {}
    for shard in sorted((shards / str(resolution)).glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".png"):
                    pixels = np.asarray(
                        Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
                    )
                    found[pixels.tobytes()] = member.name.split(".")[0]
    return found


def as_uint8(batch) -> list[np.ndarray]:
    """[B, 3, R, R] float in [-1, 1] -> list of R x R x 3 uint8 (exact inverse of x / 127.5 - 1)."""
    pixels = ((batch.permute(0, 2, 3, 1).double() + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    return list(pixels)


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
