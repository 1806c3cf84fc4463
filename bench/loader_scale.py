"""Reading order of many ranks x workers over one shard set, simulated without decoding: bytes read
vs bytes delivered (read amplification) and time to first output, with the shard-level split the
loader uses (dvdp_hr.data.shards.slot_shards, the real code) against the sample-level fallback it
replaced (every slot read every shard and kept 1/slots of the samples; now refused).

The shard set is synthetic, laid out as make_shards lays it out (shard size ceil(images / N), the
last shard partial). Sample bytes model FFHQ-1024's PNGs: 89.1 GB / 70,000 images = ~1.27 MB each,
drawn from a normal distribution with mean --mean-png-mb (1.3) and sd 0.15 MB (clipped at 0.4 MB),
plus the tar members' headers and padding as make_shards writes them (KEY.json ~200 B, KEY.png).
Time to first output is counted in samples a slot parses (tar members, no decoding) before its
shuffle buffer gives its first sample, walking the loader's own shuffle (dvdp_hr.data.order); the
same refill happens at every epoch boundary.

    .venv/bin/python bench/loader_scale.py     # 64 ranks x 6 workers, 70,000 images, 768 shards
"""
import argparse
import statistics
import time

import numpy as np

from common import write_results
from dvdp_hr.data.order import shuffled
from dvdp_hr.data.shards import epoch_permutation, read_amplification, slot_shards
from dvdp_hr.data.sizing import shard_size_for, shards_made

TAR_BLOCK, TAR_RECORD = 512, 10240  # USTAR: 512-byte headers and data blocks, archive padded to records
JSON_BYTES = 200  # KEY.json metadata per sample


def padded(size: int) -> int:
    return -(-size // TAR_BLOCK) * TAR_BLOCK


def sample_bytes(images: int, mean_mb: float, seed: int) -> np.ndarray:
    """Tar bytes of each sample (KEY.json and KEY.png members with headers) in source order."""
    png = np.random.default_rng(seed).normal(mean_mb * 1e6, 0.15e6, images).clip(0.4e6).astype(np.int64)
    return 2 * TAR_BLOCK + padded(JSON_BYTES) + -(-png // TAR_BLOCK) * TAR_BLOCK


def shard_layout(images: int, num_shards: int, per_sample: np.ndarray) -> list[np.ndarray]:
    """Per-shard arrays of sample bytes, filled in source order as make_shards fills them."""
    size = shard_size_for(images, num_shards)
    return [per_sample[i * size:(i + 1) * size] for i in range(shards_made(images, size))]


def shard_file_bytes(samples: np.ndarray) -> int:
    """A shard file: its members, two zero blocks, padded to whole tar records."""
    return -(-(int(samples.sum()) + 2 * TAR_BLOCK) // TAR_RECORD) * TAR_RECORD


def time_to_first_output(share: int, buffer_size: int, parsed_per_kept: int = 1, offset: int = 0,
                         set_size: int = 0) -> int:
    """Samples parsed before the first output of the loader's shuffle (dvdp_hr.data.order.shuffled)
    when the slot's kept samples are the items; kept sample j is parsed as number offset + j * stride
    + 1 in the slot's read. The buffer emits once it holds buffer_size items, or once the input ends."""
    parsed = 0

    def items():
        nonlocal parsed
        for j in range(share):
            parsed = offset + j * parsed_per_kept + 1
            yield j
        parsed = max(parsed, set_size)  # the input ends only after the slot's last shard is read

    next(shuffled(items(), buffer_size, _FixedRng()))
    return parsed


class _FixedRng:
    """The shuffle's draws do not change when it first emits; any value serves."""

    def random(self) -> float:
        return 0.0


def shard_level(shards: list[np.ndarray], slots: int, buffer_size: int, epochs: int, seed: int) -> dict:
    """Per-slot figures of the shard-level split over `epochs` epochs, with the per-epoch cover checked."""
    rows = [{"shards": 0, "samples": 0, "read": 0, "delivered": 0, "first_output": []} for _ in range(slots)]
    for epoch in range(epochs):
        covered = []
        for slot, row in enumerate(rows):
            mine = slot_shards(len(shards), seed, epoch, slot, slots)
            covered += mine
            share = sum(len(shards[s]) for s in mine)
            row["shards"] += len(mine)
            row["samples"] += share
            row["read"] += sum(shard_file_bytes(shards[s]) for s in mine)
            row["delivered"] += sum(int(shards[s].sum()) for s in mine)
            row["first_output"].append(time_to_first_output(share, buffer_size, set_size=share))
        assert sorted(covered) == list(range(len(shards))), "an epoch must cover every shard exactly once"
    return summarise(rows, epochs)


def sample_level(shards: list[np.ndarray], slots: int, buffer_size: int, seed: int) -> dict:
    """The removed fallback (fewer shards than slots), one epoch: every slot reads every shard and keeps
    the samples with running index j % slots == slot."""
    order = epoch_permutation(len(shards), seed, 0)
    per_sample = np.concatenate([shards[s] for s in order])
    set_read = sum(shard_file_bytes(s) for s in shards)
    rows = []
    for slot in range(slots):
        kept = per_sample[slot::slots]
        rows.append({"shards": len(shards), "samples": len(kept), "read": set_read, "delivered": int(kept.sum()),
                     "first_output": [time_to_first_output(len(kept), buffer_size, slots, slot, len(per_sample))]})
    return summarise(rows, 1)


def summarise(rows: list[dict], epochs: int) -> dict:
    read, delivered = sum(r["read"] for r in rows), sum(r["delivered"] for r in rows)

    def spread(values) -> dict:
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    return {
        "epochs": epochs,
        "read_amplification": read / delivered,
        "per_slot_per_epoch": {
            "shards": spread([r["shards"] / epochs for r in rows]),
            "samples": spread([r["samples"] / epochs for r in rows]),
            "bytes_read_mb": spread([r["read"] / epochs / 1e6 for r in rows]),
            "bytes_delivered_mb": spread([r["delivered"] / epochs / 1e6 for r in rows]),
            "first_output_samples_parsed": spread([f for r in rows for f in r["first_output"]]),
        },
    }


def markdown(args, new: dict, old: dict, recipe: dict) -> list[str]:
    slots = args.world_size * max(1, args.workers)
    lines = [f"Date: {time.strftime('%Y-%m-%d')}; machine: 2-core CPU (a pure simulation: the figures do not depend "
             f"on the machine). No decoding: the reading order of {args.world_size} "
             f"ranks x {args.workers} workers = {slots} reading slots over a synthetic FFHQ-1024 set of "
             f"{args.images:,} images, ~{args.mean_png_mb} MB per 1024 PNG (FFHQ: 89.1 GB / 70,000), "
             f"shuffle buffer {args.shuffle_buffer}.", "",
             "| split | shards | shards / slot | samples / slot | MB read / slot | MB delivered / slot | "
             "samples parsed before first output (and at each epoch boundary) | read amplification |",
             "|---|---|---|---|---|---|---|---|"]
    for name, count, result in ((f"shard-level (--num-shards {args.num_shards})", recipe["num_shards"], new),
                                ("sample-level fallback (old rule, now refused)", args.old_num_shards, old)):
        per = result["per_slot_per_epoch"]
        cells = [_spread(per[key]) for key in ("shards", "samples", "bytes_read_mb", "bytes_delivered_mb",
                                                "first_output_samples_parsed")]
        lines.append(f"| {name} | {count} | " + " | ".join(cells) + f" | {result['read_amplification']:.2f} |")
    lines += ["", "Cells: min / median / max over slots, per epoch. " + recipe["note"]]
    return lines


def _spread(values: dict) -> str:
    return " / ".join(f"{values[k]:,.0f}" if values[k] >= 10 else f"{values[k]:.2f}" for k in ("min", "median", "max"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=6, help="data.num_workers per rank (0 counts as 1 slot)")
    p.add_argument("--images", type=int, default=70_000)
    p.add_argument("--num-shards", type=int, default=768, help="make_shards --num-shards (the README recipe)")
    p.add_argument("--old-num-shards", type=int, default=70, help="the old recipe: --shard-size 1000")
    p.add_argument("--shuffle-buffer", type=int, default=128, help="data.shuffle_buffer (configs/ffhq1024.yaml)")
    p.add_argument("--mean-png-mb", type=float, default=1.3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    slots = args.world_size * max(1, args.workers)
    per_sample = sample_bytes(args.images, args.mean_png_mb, args.seed)
    shards = shard_layout(args.images, args.num_shards, per_sample)
    if len(shards) < slots:
        raise SystemExit(f"--num-shards {args.num_shards} gives {len(shards)} shards for {slots} reading slots: "
                         f"the loader refuses such a set (and read_amplification with it); raise --num-shards")
    new = shard_level(shards, slots, args.shuffle_buffer, args.epochs, args.seed)
    old = sample_level(shard_layout(args.images, args.old_num_shards, per_sample), slots, args.shuffle_buffer,
                       args.seed)
    file_sizes = [shard_file_bytes(s) for s in shards]
    recipe = {"num_shards": len(shards), "shard_size": shard_size_for(args.images, args.num_shards),
              "read_amplification_function": read_amplification(len(shards), slots, file_sizes),
              "old_rule_read_amplification_function": read_amplification(args.old_num_shards, slots,
                                                                          sample_level_fallback=True)}
    recipe["note"] = (f"--num-shards {args.num_shards} gives {len(shards)} shards of {recipe['shard_size']} "
                      f"samples; dvdp_hr.data.shards.read_amplification gives "
                      f"{recipe['read_amplification_function']:.2f} (shard-level) and "
                      f"{recipe['old_rule_read_amplification_function']:.0f} (old rule at {args.old_num_shards} shards). "
                      "Measured figures here count the tar end-of-archive padding as read but not delivered.")
    payload = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args), "slots": slots, "recipe": recipe,
               "shard_level": new, "sample_level_old_rule": old}
    write_results("loader_scale", payload, markdown(args, new, old, recipe))
    print("\n".join(markdown(args, new, old, recipe)))
    print(f"old rule (sample-level fallback) at {args.old_num_shards} shards: read amplification "
          f"{old['read_amplification']:.2f}")
    print(f"read amplification at {args.world_size}x{args.workers}: {new['read_amplification']:.2f}")


if __name__ == "__main__":
    main()
