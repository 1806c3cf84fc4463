"""Decode, normalise, crop/resize and box-average images (numpy + PIL only, no torch).

Conversion rules used by make_shards (each applied rule is recorded in the sample's json):
- grayscale / 1-bit / palette -> RGB by replication (PIL's convert);
- alpha (RGBA, LA, PA, palette or RGB with tRNS) -> composited on white:
  out = round((c * a + 255 * (255 - a)) / 255), integer arithmetic, round half up;
- 16-bit -> 8-bit by keeping the high byte (v >> 8, what PIL does for 16-bit RGB PNGs);
- YCbCr -> RGB (PIL's convert); CMYK and other colour spaces are rejected, because converting
  them without their ICC profile gives wrong colours silently;
- EXIF orientation is applied.
Non-square or wrong-size images: centre crop to the shorter side (offset floor((w - s) / 2)),
then resize with PIL's Lanczos filter (RESIZE_FILTER) when the side differs from the target.
"""

import io
import struct

import numpy as np
from PIL import Image, ImageOps

RESIZE_FILTER = "lanczos"
ROUNDING = (
    "box average of the full-resolution 8-bit image over each 2^m x 2^m block, summed exactly "
    "in integers and rounded half up once per resolution: q = floor(sum / n + 1/2)"
)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GRAY_MODES = {"L": "grayscale to RGB", "1": "1-bit to RGB", "P": "palette to RGB"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class RejectedImage(ValueError):
    """The image cannot be converted by a documented rule; the message is the reason."""


def png_header(data: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR chunk, None when data is not a PNG."""
    if not data.startswith(_PNG_SIGNATURE) or len(data) < 26:
        return None
    return data[24], data[25]


def is_plain_rgb8_png(data: bytes, size: int) -> bool:
    """True when data is a PNG of 8-bit RGB, size x size, without transparency (kept verbatim)."""
    header = png_header(data)
    if header != (8, 2):
        return False
    width, height = struct.unpack(">II", data[16:24])
    return (width, height) == (size, size) and b"tRNS" not in data


def open_image(data: bytes) -> Image.Image:
    """Fully decode data with PIL; any failure becomes RejectedImage naming the cause."""
    if not data:
        raise RejectedImage("empty file")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except Exception as exn:  # PIL raises many types for corrupt/truncated data
        raise RejectedImage(f"cannot decode: {type(exn).__name__}: {exn}") from None


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """uint8 RGBA -> uint8 RGB over a white background, rounded half up (integer exact)."""
    color = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:4].astype(np.uint32)
    return ((color * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _sixteen_to_rgb8(image: Image.Image) -> np.ndarray:
    values = np.asarray(image).astype(np.int64)
    if values.min() < 0 or values.max() > 65535:
        raise RejectedImage(
            f"unsupported 32-bit integer image (values {values.min()}..{values.max()})"
        )
    gray = (values >> 8).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def to_rgb8(image: Image.Image, data: bytes) -> tuple[np.ndarray, list[str]]:
    """Apply the module's conversion rules; returns (uint8 HxWx3, list of applied rules)."""
    mode, rules = image.mode, []
    header = png_header(data)
    if mode in _SIXTEEN_BIT_MODES or (header is not None and header[0] == 16):
        rules.append("16-bit to 8-bit (high byte)")
    if mode in _SIXTEEN_BIT_MODES:  # single-channel 16/32-bit integer images
        return _sixteen_to_rgb8(image), rules + ["grayscale to RGB"]
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"))
        return composite_on_white(rgba), rules + ["alpha composited on white"]
    if mode in _GRAY_MODES:
        return np.asarray(image.convert("RGB")), rules + [_GRAY_MODES[mode]]
    if mode == "YCbCr":
        return np.asarray(image.convert("RGB")), rules + ["YCbCr to RGB"]
    if mode == "RGB":
        return np.asarray(image), rules
    if mode == "CMYK":
        raise RejectedImage("CMYK colour space: convert it to RGB with its ICC profile first")
    raise RejectedImage(f"unsupported image mode {mode!r}: convert it to 8-bit RGB first")


def apply_orientation(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """Rotate/flip per the EXIF orientation tag, if any."""
    orientation = image.getexif().get(0x0112, 1)
    if orientation in (None, 1):
        return image, []
    return ImageOps.exif_transpose(image), [f"EXIF orientation {orientation} applied"]


def crop_resize_square(pixels: np.ndarray, size: int) -> tuple[np.ndarray, list[str]]:
    """Centre crop to a square, then Lanczos-resize to size x size (no-op when already right)."""
    height, width = pixels.shape[:2]
    side, rules = min(height, width), []
    if (height, width) != (side, side):
        top, left = (height - side) // 2, (width - side) // 2
        pixels = pixels[top : top + side, left : left + side]
        rules.append(f"centre crop {width}x{height} to {side}x{side}")
    if side != size:
        resized = Image.fromarray(np.ascontiguousarray(pixels)).resize((size, size), Image.LANCZOS)
        pixels = np.asarray(resized)
        rules.append(f"resize {side}x{side} to {size}x{size} ({RESIZE_FILTER})")
    return np.ascontiguousarray(pixels), rules


def _block_sums_2x2(sums: np.ndarray) -> np.ndarray:
    return sums[0::2, 0::2] + sums[1::2, 0::2] + sums[0::2, 1::2] + sums[1::2, 1::2]


# dvdp-math.md s1: the stage image is avg_pool2d(x0, 2^m); here on the 8-bit image, quantised once
def box_pyramid(full: np.ndarray, factors: list[int]) -> dict[int, np.ndarray]:
    """uint8 HxWx3 -> {f: uint8 (H/f)x(W/f)x3} for power-of-two factors f: the exact block mean
    (integer block sums, built 2x2 at a time from the full image) rounded half up (ROUNDING)."""
    result, sums, factor = {}, full.astype(np.uint32), 1
    while factor < max(factors, default=1):
        sums, factor = _block_sums_2x2(sums), factor * 2
        if factor in factors:
            count = factor * factor
            result[factor] = ((sums + count // 2) // count).astype(np.uint8)
    if 1 in factors:
        result[1] = full
    return result


def encode_png(pixels: np.ndarray) -> bytes:
    """Deterministic PNG bytes of a uint8 HxWx3 array (no timestamps or text chunks)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def decode_rgb(data: bytes, size: int) -> np.ndarray:
    """Decode a shard's PNG to uint8 size x size x 3; ValueError when it is not that."""
    image = Image.open(io.BytesIO(data))
    image.load()
    if image.size != (size, size):
        raise ValueError(f"image is {image.size[0]}x{image.size[1]}, expected {size}x{size}")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)
