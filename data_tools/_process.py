"""Turn one source image into its PNG bytes at every resolution (runs inside pool workers)."""

from dataclasses import dataclass, field

from dvdp_hr.data.images import (
    RejectedImage,
    apply_orientation,
    box_pyramid,
    crop_resize_square,
    encode_png,
    is_plain_rgb8_png,
    open_image,
    to_rgb8,
)

from ._sources import Source, forget_open_zips, read_item


@dataclass(frozen=True)
class Settings:
    resolutions: tuple[int, ...]  # descending; the first is the full resolution
    on_mismatch: str  # "crop" or "reject"


@dataclass
class Processed:
    index: int
    name: str
    reason: str | None = None  # set when rejected
    width: int = 0
    height: int = 0
    rules: list[str] = field(default_factory=list)
    pngs: dict[int, bytes] = field(default_factory=dict)


def _full_resolution_pixels(data: bytes, settings: Settings, result: Processed):
    image = open_image(data)
    image, rules = apply_orientation(image)
    result.width, result.height = image.size
    pixels, more = to_rgb8(image, data)
    full = settings.resolutions[0]
    if pixels.shape[:2] != (full, full) and settings.on_mismatch == "reject":
        raise RejectedImage(
            f"size {result.width}x{result.height}, expected {full}x{full} "
            "(pass --on-mismatch crop to centre-crop and resize)"
        )
    pixels, resize_rules = crop_resize_square(pixels, full)
    result.rules = rules + more + resize_rules
    return pixels


def process(source: Source, index: int, settings: Settings) -> Processed:
    """Decode, convert and box-average item `index`; a rejection is returned, never raised."""
    name = source.items[index]
    result = Processed(index, name)
    try:
        data = read_item(source, name)
    except (OSError, KeyError) as exn:
        result.reason = f"unreadable: {type(exn).__name__}: {exn}"
        return result
    try:
        full = _full_resolution_pixels(data, settings, result)
    except RejectedImage as exn:
        result.reason = str(exn)
        return result
    factors = {r: settings.resolutions[0] // r for r in settings.resolutions}
    pyramid = box_pyramid(full, list(factors.values()))
    for resolution, factor in factors.items():
        if factor == 1 and not result.rules and is_plain_rgb8_png(data, resolution):
            result.pngs[resolution] = (
                data  # the source bytes already are the full-resolution sample
            )
        else:
            result.pngs[resolution] = encode_png(pyramid[factor])
    return result


_worker_state: dict = {}


def init_worker(source: Source, settings: Settings) -> None:
    """Pool initializer: ship the source listing once per worker instead of once per task."""
    forget_open_zips()
    _worker_state["source"], _worker_state["settings"] = source, settings


def process_in_worker(index: int) -> Processed:
    return process(_worker_state["source"], index, _worker_state["settings"])
