"""Verify a make_shards output folder against its manifest and print a summary.

Checks, per shard of every resolution set: the file exists with the recorded size and sha256,
its tar parses, it holds the recorded number of samples (KEY.png + KEY.json each), every PNG
decodes to RGB at the set's resolution, and its keys equal those of the same shard in every
other set. Exit status 1 when anything mismatches (each problem is printed), 0 otherwise.

    python data_tools/inspect_shards.py shards/ffhq1024 --workers 8
"""

import argparse
import json
import multiprocessing
import sys
import tarfile
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: make `data_tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_tools._shard_writer import sha256_file  # noqa: E402
from data_tools.make_shards import pool_start_method  # noqa: E402
from dvdp_hr.data.images import decode_rgb  # noqa: E402


def _samples(path: Path) -> list[tuple[str, dict]]:
    """[(key, {extension: bytes})] in tar order."""
    samples: list[tuple[str, dict]] = []
    with tarfile.open(path, "r|") as tar:
        for member in tar:
            key, _, extension = member.name.partition(".")
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][extension] = tar.extractfile(member).read()
    return samples


def _sample_problems(key: str, files: dict, resolution: int, decode: bool) -> list[str]:
    if set(files) != {"png", "json"}:
        return [f"sample {key}: members {sorted(files)}, expected json and png"]
    problems = []
    if json.loads(files["json"]).get("resolution") != resolution:
        problems.append(f"sample {key}: json resolution differs from {resolution}")
    if decode:
        try:
            decode_rgb(files["png"], resolution)
        except Exception as exn:
            problems.append(f"sample {key}: {type(exn).__name__}: {exn}")
    return problems


def check_shard(task: tuple[str, int, dict, bool]) -> tuple[list[str], list[str]]:
    """(problems, keys) of one shard file against its manifest entry."""
    path, resolution, entry, decode = Path(task[0]), task[1], task[2], task[3]
    if not path.is_file():
        return ["missing"], []
    problems = []
    if path.stat().st_size != entry["bytes"]:
        problems.append(f"size {path.stat().st_size} != manifest {entry['bytes']}")
    if sha256_file(path) != entry["sha256"]:
        problems.append("sha256 differs from the manifest")
    try:
        samples = _samples(path)
    except (tarfile.TarError, OSError) as exn:
        return problems + [f"unreadable tar: {type(exn).__name__}: {exn}"], []
    if len(samples) != entry["samples"]:
        problems.append(f"{len(samples)} samples != manifest {entry['samples']}")
    for key, files in samples:
        problems += _sample_problems(key, files, resolution, decode)
    return problems, [key for key, _ in samples]


def _tasks(root: Path, manifest: dict, decode: bool) -> list[tuple[str, int, dict, bool]]:
    return [
        (str(root / str(r) / e["name"]), r, e, decode)
        for r in manifest["resolutions"]
        for e in manifest["sets"][str(r)]["shards"]
    ]


def _run_checks(tasks, workers: int):
    if workers <= 1:
        return [check_shard(t) for t in tasks]
    with multiprocessing.get_context(pool_start_method()).Pool(workers) as pool:
        return pool.map(check_shard, tasks, chunksize=1)


def inspect(root: Path, decode: bool = True, workers: int = 1) -> list[str]:
    """All problems found (empty when the shard sets match the manifest)."""
    manifest = json.loads((root / "manifest.json").read_text())
    tasks = _tasks(root, manifest, decode)
    problems, keys = [], {}
    for (path, resolution, entry, _), (found, shard_keys) in zip(
        tasks, _run_checks(tasks, workers)
    ):
        problems += [f"{path}: {p}" for p in found]
        keys.setdefault(entry["name"], {})[resolution] = shard_keys
    for name, per_resolution in keys.items():
        reference = per_resolution[manifest["full_resolution"]]
        problems += [
            f"{root / str(r) / name}: keys differ from the {manifest['full_resolution']} set"
            for r, k in per_resolution.items()
            if k and reference and k != reference
        ]
    if not manifest.get("complete", False):
        problems.append(f"{root / 'manifest.json'}: marked incomplete")
    return problems


def _summary(root: Path) -> list[str]:
    manifest = json.loads((root / "manifest.json").read_text())
    lines = [
        f"{root}: {manifest['num_written']} samples written, {manifest['num_rejected']} rejected, "
        f"{manifest['num_shards']} shards per set"
    ]
    for r in manifest["resolutions"]:
        s = manifest["sets"][str(r)]
        lines.append(
            f"  {r:>5}: {len(s['shards'])} shards, {s['num_samples']} samples, "
            f"{s['bytes'] / 1e6:.1f} MB"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="inspect_shards",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dir", help="make_shards output folder (holds manifest.json)")
    parser.add_argument("--no-decode", action="store_true", help="skip decoding every PNG (faster)")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes checking shards in parallel"
    )
    args = parser.parse_args(argv)
    root = Path(args.dir)
    if not (root / "manifest.json").is_file():
        print(
            f"inspect_shards: error: {root / 'manifest.json'} not found: "
            f"is {root} a make_shards --out "
            "folder of a finished run?",
            file=sys.stderr,
        )
        return 2
    problems = inspect(root, decode=not args.no_decode, workers=args.workers)
    print("\n".join(_summary(root) + [f"MISMATCH {p}" for p in problems]))
    print(f"inspect_shards: {len(problems)} mismatches")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
