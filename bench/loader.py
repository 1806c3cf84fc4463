"""Loader throughput: the 64 shard set vs the 1024 set vs reading the 1024 set and box-averaging
to 64 (what a single-resolution shard format would force), plus make_shards images/s per worker.

Images: scikit-image photographs, centre-cropped, Lanczos-resized to 1024 and given Gaussian
grain (sigma 3 levels) so the PNGs are about as large and slow to decode as FFHQ's (~1.5 MB).
One process (num_workers=0), so the numbers are per CPU core.

    .venv/bin/python bench/loader.py            # writes bench/results/loader.{json,md}
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import skimage.data
import torch
import torch.nn.functional as F
import webdataset
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from data_tools import make_shards  # noqa: E402
from dvdp_hr.data import StageStream, stage_urls  # noqa: E402

PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "cat",
)
RESOLUTIONS = "1024,512,256,128,64"


def synthetic_photo(index: int, size: int = 1024) -> np.ndarray:
    pixels = getattr(skimage.data, PHOTOS[index % len(PHOTOS)])()
    side = min(pixels.shape[:2])
    top, left = (pixels.shape[0] - side) // 2, (pixels.shape[1] - side) // 2
    image = Image.fromarray(pixels[top : top + side, left : left + side]).resize(
        (size, size), Image.LANCZOS
    )
    grain = np.random.default_rng(index).normal(0, 3, (size, size, 3))
    return (
        np.clip(np.roll(np.asarray(image), 37 * index, axis=1) + grain, 0, 255)
        .round()
        .astype(np.uint8)
    )


def write_sources(folder: Path, count: int) -> None:
    for i in range(count):
        path = folder / f"{i // 1000 * 1000:05d}" / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(synthetic_photo(i)).save(path)


def time_make_shards(source: Path, out: Path, workers: int, count: int) -> dict:
    started = time.perf_counter()
    code = make_shards.main(
        [
            "--source",
            str(source),
            "--out",
            str(out),
            "--resolutions",
            RESOLUTIONS,
            "--shard-size",
            "16",
            "--workers",
            str(workers),
            "--no-progress",
        ]
    )
    seconds = time.perf_counter() - started
    assert code == 0
    return {
        "workers": workers,
        "images_per_s": count / seconds,
        "images_per_s_per_worker": count / seconds / workers,
    }


def loader_rate(
    urls, resolution: int, batch: int, batches: int, downsample_to: int | None = None
) -> float:
    iterator = iter(
        StageStream(urls, resolution, batch, seed=0, shuffle_buffer=4 * batch, flip=True)
    )
    next(iterator)  # warm-up: open files, first decode
    started = time.perf_counter()
    for _ in range(batches):
        x = next(iterator)
        if downsample_to is not None:
            x = F.avg_pool2d(x, resolution // downsample_to)
    return batch * batches / (time.perf_counter() - started)


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],  # other jobs share this machine's 2 cores
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pillow": PIL.__version__,
        "webdataset": webdataset.__version__,
    }


def write_results(result: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "loader.json").write_text(json.dumps(result, indent=1) + "\n")
    rows = [f"| {k} | {v:.1f} |" for k, v in result["loader_images_per_s"].items()]
    shard_rows = [
        f"| {m['workers']} | {m['images_per_s']:.2f} | {m['images_per_s_per_worker']:.2f} |"
        for m in result["make_shards"]
    ]
    text = [
        "# Loader benchmark",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, torch "
        f"{result['machine']['torch']}, Pillow {result['machine']['pillow']}. 1-min load average "
        f"{result['machine']['load_average_1min']:.1f}: the cores are shared with other jobs, so "
        "absolute rates are noisy; the ratio is what the benchmark checks.",
        "",
        f"{result['images']} synthetic 1024 photos, mean PNG bytes per sample: "
        + ", ".join(f"{r}: {b:,.0f}" for r, b in result["mean_png_bytes"].items()),
        "",
        "| loader (1 process) | images/s |",
        "|---|---|",
        *rows,
        "",
        "| make_shards workers | images/s | per worker |",
        "|---|---|---|",
        *shard_rows,
        "",
        f"decode speedup 64-key vs 1024-decode-downsample: {result['speedup']:.1f}",
        "",
    ]
    (folder / "loader.md").write_text("\n".join(text))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--results", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        write_sources(work / "src", args.images)
        shard_runs = [
            time_make_shards(work / "src", work / f"shards{w}", w, args.images) for w in (1, 2)
        ]
        shards = work / "shards1"
        manifest = json.loads((shards / "manifest.json").read_text())
        rates = {
            "64 set": loader_rate(stage_urls(str(shards), 64), 64, 64, 40),
            "1024 set": loader_rate(stage_urls(str(shards), 1024), 1024, 4, 12),
            "1024 set + box-average to 64": loader_rate(
                stage_urls(str(shards), 1024), 1024, 4, 12, 64
            ),
        }
    result = {
        "command": " ".join([".venv/bin/python", "bench/loader.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        "images": args.images,
        "mean_png_bytes": {r: s["bytes"] / s["num_samples"] for r, s in manifest["sets"].items()},
        "loader_images_per_s": rates,
        "make_shards": shard_runs,
        "speedup": rates["64 set"] / rates["1024 set + box-average to 64"],
    }
    write_results(result, Path(args.results))
    print(json.dumps(result, indent=1))
    print(f"decode speedup 64-key vs 1024-decode-downsample: {result['speedup']:.1f}")


if __name__ == "__main__":
    main()
