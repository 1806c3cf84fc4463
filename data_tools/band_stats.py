"""Measure, from a make_shards folder, the per-coordinate variance of the detail band removed at
each 2x resolution step (orthonormal units, dvdp-math.md s8; definition in
dvdp_hr/data/band_stats.py) and write DIR/band_stats.json:

    {"schema": "dvdp_hr.band_stats/v1", "resolutions": [1024, ..., 64], "num_images": N,
     "bands": [{"from": 1024, "to": 512, "stage": 0, "var_pixel": ...,
                "var_orthonormal": ...}, ...],
     "manifest_sha256": ..., "shards_read": [...]}

The bands are computed in float64 from the full-resolution set (the 8-bit source pixels), so
they are exact box averages of the data, not of the rounded lower-resolution sets. Whole shards
spread evenly over the set are read until --max-images images are used.

    python data_tools/band_stats.py shards/ffhq1024 --max-images 5000
"""

import argparse
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: make `data_tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data_tools._manifest import write_json_atomic  # noqa: E402
from dvdp_hr.data import BandStats, manifest_digest, stage_urls  # noqa: E402
from dvdp_hr.data.images import decode_rgb  # noqa: E402
from dvdp_hr.data.shards import load_manifest, read_shard  # noqa: E402

BATCH = 16


def spread(count: int, wanted: int) -> list[int]:
    """`wanted` indices spread evenly over range(count) (all of them when wanted >= count)."""
    wanted = min(count, wanted)
    return sorted({(i * count) // wanted for i in range(wanted)})


def _pixel_batches(urls: list[str], resolution: int, max_images: int):
    images, used = [], 0
    for url in urls:
        for sample in read_shard(url):
            if "__error__" in sample:
                raise ValueError(f"{url}: {sample['__error__']}; run data_tools/inspect_shards.py")
            images.append(torch.from_numpy(decode_rgb(sample["png"], resolution).copy()))
            used += 1
            if len(images) == BATCH or used == max_images:
                yield torch.stack(images).permute(0, 3, 1, 2).to(torch.float64) / 127.5 - 1.0
                images = []
            if used == max_images:
                return
    if images:
        yield torch.stack(images).permute(0, 3, 1, 2).to(torch.float64) / 127.5 - 1.0


def measure(root: Path, max_images: int) -> dict:
    """band_stats.json content for the make_shards folder `root`."""
    manifest = load_manifest(str(root))
    full, low = manifest["full_resolution"], min(manifest["resolutions"])
    urls = stage_urls(str(root), full)
    per_shard = max(1, manifest["shard_size"])
    chosen = [urls[i] for i in spread(len(urls), -(-max_images // per_shard))]
    stats = BandStats(full, low)
    for batch in _pixel_batches(chosen, full, max_images):
        stats.update(batch)
    return {
        **stats.result(),
        "source_resolution": full,
        "manifest_sha256": manifest_digest(str(root)),
        "shards_read": [Path(u).name for u in chosen],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="band_stats", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dir", help="make_shards output folder (holds manifest.json)")
    parser.add_argument(
        "--max-images", type=int, default=5000, help="images to use (default %(default)s)"
    )
    args = parser.parse_args(argv)
    root = Path(args.dir)
    if not (root / "manifest.json").is_file() or args.max_images < 1:
        print(
            f"band_stats: error: need a finished make_shards folder (no {root / 'manifest.json'}) "
            "and --max-images >= 1",
            file=sys.stderr,
        )
        return 2
    try:
        result = measure(root, args.max_images)
    except ValueError as exn:
        print(f"band_stats: error: {exn}", file=sys.stderr)
        return 2
    write_json_atomic(root / "band_stats.json", result)
    for band in result["bands"]:
        print(
            f"{band['from']:>5} -> {band['to']:<5} stage {band['stage']}: "
            f"var_pixel {band['var_pixel']:.4g}  "
            f"var_orthonormal {band['var_orthonormal']:.4g}"
        )
    print(f"band_stats: {result['num_images']} images -> {root / 'band_stats.json'}")
    variances = ",".join(f"{band['var_orthonormal']:.4g}" for band in result["bands"])
    print("for the turning-point rule (finest band first), add to the config or the command line:\n"
          f"  schedule.turning_points=auto schedule.band_stats.sigma_perp2=[{variances}] "
          f"schedule.band_stats.source={root / 'band_stats.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
