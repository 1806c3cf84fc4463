"""Convert an image folder/zip (FFHQ-1024's layout, any png/jpg/jpeg/webp tree, a StyleGAN
dataset-tool zip) into one WebDataset shard set per resolution: DIR/{res}/shard-NNNNNN.tar.

Every set holds the same samples in the same order. Sample key = zero-padded (8 digits) index
of the image in sorted source order (rejected images leave gaps). Members: KEY.png (8-bit RGB at
that resolution) and KEY.json (source, width, height, index, resolution, conversions). Lower
resolutions are exact box averages of the full-resolution image (dvdp_hr.data.images.ROUNDING).
Outputs: DIR/manifest.json, DIR/rejected.json. The shard bytes do not depend on --workers.

    python data_tools/make_shards.py --source ffhq/images1024x1024 --out shards/ffhq1024 \\
        --resolutions 1024,512,256,128,64 --num-shards 768 --workers 16

A training run splits each set by whole shards over world_size x num_workers reading slots and
refuses a set with fewer shards than slots: --num-shards N (shard size ceil(images / N)) sizes the
sets for a run. 768 gives FFHQ's 70,000 images 761 shards of 92: enough for 64 GPUs x 6 workers
(384 slots), and ~6 per slot with configs/ffhq1024.yaml's 2 workers per stage (128 slots).
"""

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: make `data_tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from data_tools._manifest import (
    MANIFEST,
    PROGRESS,
    REJECTED,
    RunState,
    fresh_state,  # noqa: E402
    record_payload,
    resume_state,
    write_json_atomic,
)
from data_tools._process import Processed, Settings, init_worker, process, process_in_worker  # noqa: E402
from data_tools._shard_writer import ShardGroupWriter  # noqa: E402
from data_tools._sources import Source, open_source  # noqa: E402
from dvdp_hr.data.images import RESIZE_FILTER, ROUNDING  # noqa: E402
from dvdp_hr.data.sizing import shard_size_for  # noqa: E402

DEFAULT_SHARD_SIZE = 1000


def parse_resolutions(text: str) -> tuple[int, ...]:
    """'1024,512,64' -> (1024, 512, 64); each must be the largest divided by a power of two."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()}, reverse=True)
    except ValueError:
        raise ValueError(
            f"--resolutions {text!r}: expected comma-separated integers like 1024,512,256"
        )
    full = values[0] if values else 0
    for value in values:
        ratio = full // value if value > 0 else 0
        if value < 1 or full % value or ratio & (ratio - 1):
            raise ValueError(
                f"--resolutions {text!r}: {value} is not {full} divided by a power of two"
            )
    return tuple(values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="make_shards",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--source", required=True, help="folder tree or zip of png/jpg/jpeg/webp images"
    )
    parser.add_argument("--out", required=True, help="output folder (DIR/{res}/shard-NNNNNN.tar)")
    parser.add_argument(
        "--resolutions",
        default="1024,512,256,128,64",
        help="comma-separated; the largest is the full resolution (default %(default)s)",
    )
    parser.add_argument(
        "--shard-size",
        type=int,
        help=f"samples per shard (default {DEFAULT_SHARD_SIZE}); or give --num-shards",
    )
    parser.add_argument(
        "--num-shards",
        type=int,
        help="target shards per resolution set: shard size = ceil(images found / N). A run reads a set "
        "with world_size x num_workers slots and needs at least that many shards (rounding up and "
        "rejected images can give a few fewer than N, so leave a margin)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="decode/encode processes (default: all CPUs); output does not depend on it",
    )
    parser.add_argument(
        "--on-mismatch",
        choices=("crop", "reject"),
        default="crop",
        help=f"non-square or wrong-size images: centre crop + {RESIZE_FILTER} resize, "
        "or reject (default %(default)s)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep complete, verified shards of an interrupted run and write the rest",
    )
    parser.add_argument(
        "--strict", action="store_true", help="fail the run if any image is rejected"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _metadata(result: Processed, source: Source, key: str) -> dict[int, bytes]:
    base = {
        "source": result.name,
        "width": result.width,
        "height": result.height,
        "index": result.index,
        "key": key,
        "conversions": result.rules,
    }
    if result.name in source.labels:
        base["label"] = source.labels[result.name]
    return {r: json.dumps({**base, "resolution": r}, sort_keys=True).encode() for r in result.pngs}


def pool_start_method() -> str:
    """fork on Linux, as torch's DataLoader does: spawn would re-import the parent's __main__ in
    every worker (torch and more when started from `dvdp-hr`), seconds each. The workers use only
    numpy, PIL and zlib, never the parent's torch threads."""
    return "fork" if sys.platform.startswith("linux") else "spawn"


def _results(source: Source, settings: Settings, start: int, workers: int):
    indices = range(start, len(source.items))
    if workers <= 1:
        yield from (process(source, i, settings) for i in indices)
        return
    context = multiprocessing.get_context(pool_start_method())
    with context.Pool(workers, initializer=init_worker, initargs=(source, settings)) as pool:
        yield from pool.imap(process_in_worker, indices, chunksize=4)


class _Run:
    """Consumes processed images in source order; closes a shard group every shard_size samples."""

    def __init__(self, out: Path, state: RunState, identity: dict, extra: dict, source: Source):
        self.out, self.state, self.source = out, state, source
        self.identity, self.extra = identity, extra
        self.resolutions = tuple(identity["resolutions"])
        self.writer: ShardGroupWriter | None = None
        self.upscaled = 0  # images smaller than the full resolution (resized up), this invocation

    def add(self, result: Processed) -> None:
        if result.reason is not None:
            self.state.rejected.append(
                {"path": result.name, "reason": result.reason, "index": result.index}
            )
            return
        if self.writer is None:
            self.writer = ShardGroupWriter(
                self.out, self.resolutions, len(self.state.sets[self.resolutions[0]])
            )
        key = f"{result.index:08d}"
        self.upscaled += min(result.width, result.height) < self.resolutions[0]
        self.writer.add(key, result.pngs, _metadata(result, self.source, key))
        if len(self.writer.keys) == self.identity["shard_size"]:
            self.close_group(result.index + 1)

    def close_group(self, next_index: int) -> None:
        for resolution, entry in self.writer.close().items():
            self.state.sets[resolution].append(entry)
        self.writer, self.state.next_index = None, next_index
        write_json_atomic(
            self.out / PROGRESS, record_payload(self.identity, self.state, False, self.extra)
        )


def _identity(source: Source, resolutions: tuple[int, ...], args) -> dict:
    """Everything the shard bytes depend on; --resume refuses to mix runs that differ in it."""
    return {
        "source": source.root,
        "source_kind": source.kind,
        "listing_sha256": source.listing_sha256(),
        "num_found": len(source.items),
        "resolutions": list(resolutions),
        "shard_size": _shard_size(args, len(source.items)),
        "on_mismatch": args.on_mismatch,
    }


def _shard_size(args, num_found: int) -> int:
    """--shard-size, or the size that --num-shards gives for the images found (the identity holds
    the size only: both spellings of the same size make the same bytes and resume each other)."""
    if args.num_shards is not None:
        return shard_size_for(num_found, args.num_shards)
    return DEFAULT_SHARD_SIZE if args.shard_size is None else args.shard_size


def _check_args(args) -> None:
    if args.shard_size is not None and args.num_shards is not None:
        raise ValueError(
            f"--shard-size {args.shard_size} and --num-shards {args.num_shards} both given: pass one "
            "(--num-shards N sets the shard size to ceil(images found / N))"
        )
    if args.shard_size is not None and args.shard_size < 1:
        raise ValueError(f"--shard-size {args.shard_size}: must be at least 1")
    if args.num_shards is not None and args.num_shards < 1:
        raise ValueError(f"--num-shards {args.num_shards}: must be at least 1")
    if args.workers < 1:
        raise ValueError(f"--workers {args.workers}: must be at least 1")


def run(args, argv: list[str]) -> int:
    _check_args(args)
    resolutions = parse_resolutions(args.resolutions)
    source, out = open_source(args.source), Path(args.out).resolve()
    identity = _identity(source, resolutions, args)
    state = (
        resume_state(out, identity, resolutions) if args.resume else fresh_state(out, resolutions)
    )
    out.mkdir(parents=True, exist_ok=True)
    extra = {
        "requested_num_shards": args.num_shards,  # None: the size came from --shard-size
        "args": vars(args),
        "argv": argv,
        "rounding": ROUNDING,
        "resize": f"centre crop, then {RESIZE_FILTER} (PIL)",
    }
    job, found, started = (
        _Run(out, state, identity, extra, source),
        len(source.items),
        time.perf_counter(),
    )
    bar = tqdm(
        total=found,
        initial=state.next_index,
        unit="img",
        disable=args.no_progress,
        desc="make_shards",
    )
    for result in _results(
        source, Settings(resolutions, args.on_mismatch), state.next_index, args.workers
    ):
        job.add(result)
        bar.update(1)
    bar.close()
    if job.writer is not None:
        job.close_group(found)
    return _finish(out, job, identity, extra, args, time.perf_counter() - started)


def _finish(out: Path, job: _Run, identity: dict, extra: dict, args, seconds: float) -> int:
    state = job.state
    write_json_atomic(out / REJECTED, state.rejected)
    written = sum(e["samples"] for e in state.sets[identity["resolutions"][0]])
    print(
        f"make_shards: found {identity['num_found']} = written {written} "
        f"+ rejected {len(state.rejected)} "
        f"({seconds:.1f} s) -> {out}"
    )
    shards = len(state.sets[identity["resolutions"][0]])
    if shards:
        print(
            f"make_shards: {shards} shard(s) per resolution of {identity['shard_size']} samples"
            + (f" (--num-shards {args.num_shards})" if args.num_shards is not None else "")
            + f": enough for runs of up to {shards} reading slots (world_size x num_workers)"
        )
    if job.upscaled:
        print(
            f"make_shards: warning: {job.upscaled} image(s) smaller than {identity['resolutions'][0]}px "
            f"were upscaled (see 'conversions' in each sample's json); pass --on-mismatch reject "
            "to refuse them, or a lower --resolutions"
        )
    if args.strict and state.rejected:
        print(
            f"make_shards: error: --strict and {len(state.rejected)} image(s) rejected (listed in "
            f"{out / REJECTED}); fix or remove them, or run without --strict",
            file=sys.stderr,
        )
        return 1
    write_json_atomic(out / MANIFEST, record_payload(identity, state, True, extra))
    (out / PROGRESS).unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return run(args, argv)
    except (ValueError, FileNotFoundError) as exn:
        print(f"make_shards: error: {exn}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
