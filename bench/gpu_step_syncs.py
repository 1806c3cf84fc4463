"""GPU check (one device): how often one trainer step makes the host wait for the GPU.

    python bench/gpu_step_syncs.py --shards DIR --out bench/results/gpu_step_syncs.json

Runs the real Trainer (ffhq256.yaml's network and micro-batches, bf16, ZeRO-2, one rank) for a few
steps per stage, with torch.cuda.set_sync_debug_mode("warn") counting every synchronizing call the
step makes (ours and DeepSpeed's), and torch.cuda.synchronize calls counted by a wrapper. The
trainer's own design has one (the per-step agreement); DeepSpeed's bf16 overflow check and
ZeRO-2's overlap_comm add theirs, listed by call site.
"""
import argparse
import collections
import json
import os
import sys
import traceback
import warnings

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def count_syncs(fn) -> collections.Counter:
    """Synchronizing CUDA calls made by fn(), keyed by the innermost dvdp_hr/deepspeed frame."""
    sites = collections.Counter()
    original = torch.cuda.synchronize

    def counted_synchronize(*args, **kwargs):
        sites[_site(traceback.extract_stack()[:-1])] += 1
        return original(*args, **kwargs)

    torch.cuda.synchronize = counted_synchronize
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
        for w in caught:
            if "synchroniz" in str(w.message):
                sites[f"{os.path.basename(w.filename)}:{w.lineno}"] += 1
    finally:
        torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize = original
    return sites


def _site(stack) -> str:
    for frame in reversed(stack):
        if "dvdp_hr" in frame.filename or "deepspeed" in frame.filename:
            return f"{os.path.relpath(frame.filename, REPO) if 'dvdp_hr' in frame.filename else frame.filename.split('site-packages/')[-1]}:{frame.lineno}"
    return "other"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True)
    p.add_argument("--config", default=os.path.join(REPO, "configs", "ffhq256.yaml"))
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    from dvdp_hr.distributed.signals import StopFlag
    from dvdp_hr.train.config import load_config
    from dvdp_hr.train.loop import Trainer

    cfg = load_config(args.config, [f"data.shards={args.shards}", "logging.wandb_mode=disabled", "logging.progress=false",
                                    "logging.sample_count=0", "train.precision=bf16", "train.zero_stage=2",
                                    "data.num_workers=1", "checkpoint.every_images=1000000000"])
    trainer = Trainer(cfg, os.path.join(os.path.dirname(os.path.abspath(args.out)), "gpu_step_syncs_run"))
    stop = StopFlag()

    def one_step():
        k, loss, norm, _ = trainer.train_step()
        trainer.counters.images += trainer.images_per_step(k)
        trainer.counters.step += 1
        trainer._agree(stop, loss, norm)
        per_stage[k] += 1

    per_stage = collections.Counter()
    for _ in range(3):  # warm-up: cudnn.benchmark searches, allocator growth
        one_step()
    per_stage.clear()
    sites = count_syncs(lambda: [one_step() for _ in range(args.steps)])
    result = {"steps": args.steps, "steps_per_stage": dict(per_stage), "syncs_total": sum(sites.values()),
              "syncs_per_step": sum(sites.values()) / args.steps, "by_site": dict(sites.most_common()),
              "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps(result, indent=1))
    trainer.checkpoints.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
