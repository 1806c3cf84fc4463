"""The training step at scale, measured on 2 CPU ranks (gloo): where the host time goes in a step,
what an EMA update costs (partitioned vs the previous full-parameter gather), and how long a
checkpoint stalls training (background writer vs foreground).

    python bench/train_step.py                       # launches itself on 2 ranks; writes bench/results/train_step.cpu.*
    python bench/train_step.py --preset small --steps 12

One process per rank runs the real Trainer (DeepSpeed ZeRO-2, the tiny config's 3-stage schedule)
on the demo images. Every figure is the median over ranks' medians. CPU figures: the ratios (ours vs
the previous design, same run) are the result; absolute times move with the machine's load.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", help="model preset (small: ~21M parameters)")
    p.add_argument("--steps", type=int, default=12, help="timed optimizer steps")
    p.add_argument("--ema-repeats", type=int, default=5)
    p.add_argument("--saves", type=int, default=2, help="checkpoints per mode (foreground, background)")
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results", "train_step.cpu"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--shards", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---- rank side ----
class PhaseTimer:
    """Wall time per named phase of each step on this rank."""

    def __init__(self):
        self.times: dict[str, list[float]] = {}

    def wrap(self, obj, name: str, phase: str):
        original = getattr(obj, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.times.setdefault(phase, []).append(time.perf_counter() - start)
        setattr(obj, name, timed)


def _median_ms(values) -> float:
    return 1000 * statistics.median(values) if values else float("nan")


def measure_steps(trainer, timer: PhaseTimer, steps: int) -> dict:
    """Times the loop's phases for `steps` optimizer steps (after 2 warm-up steps)."""
    from dvdp_hr.distributed.signals import StopFlag

    stop = StopFlag()
    timer.wrap(trainer, "_micro_batch", "data + noise + q_sample (per micro-batch)")
    timer.wrap(trainer.engine.module, "forward", "forward")
    timer.wrap(trainer.engine, "backward", "backward")
    timer.wrap(trainer.engine, "step", "optimizer step")
    timer.wrap(trainer.ema, "update", "EMA update")
    timer.wrap(trainer, "_agree", "agreement (the one host sync)")
    totals = []
    for i in range(steps + 2):
        start = time.perf_counter()
        k, loss, norm, _ = trainer.train_step()
        trainer.counters.images += trainer.images_per_step(k)
        trainer.counters.step += 1
        trainer._agree(stop, loss, norm)
        if i >= 2:
            totals.append(time.perf_counter() - start)
        else:
            timer.times.clear()
    return {"step_total": _median_ms(totals), **{p: _median_ms(v) for p, v in timer.times.items()}}


def measure_ema(trainer, repeats: int) -> dict:
    """The partitioned update (local, foreach) vs the previous one: every master parameter gathered
    (a collective per parameter) and lerped into a full copy on every rank."""
    import torch

    ema, label = trainer.ema, trainer.ema.labels[0]
    full = {n: v.clone() for n, v in ema.full_state(label).items()}
    decay = ema.decay(label, 8)

    def full_gather_update():
        for name, value in trainer.engine.master_parameters():
            full[name].lerp_(value.float(), 1.0 - decay)

    def timed(fn):
        times = []
        for _ in range(repeats):
            torch.distributed.barrier()
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return _median_ms(times)

    return {"partitioned_ms": timed(lambda: ema.update(8)), "full_gather_ms": timed(full_gather_update),
            "parameters": sum(v.numel() for v in full.values()),
            "local_elements": sum(t.numel() for t in ema.shadows[label])}


def measure_checkpoint(trainer, saves: int, background: bool) -> dict:
    """Stall = time the training loop is blocked in save(); published = until `latest` names it."""
    from dvdp_hr.distributed import checkpoint as ckpt

    trainer.checkpoints.writer.background = background
    stalls, published = [], []
    for _ in range(saves):
        trainer.counters.images += 1  # a new tag each time
        start = time.perf_counter()
        tag = os.path.basename(trainer.save())
        stalls.append(time.perf_counter() - start)
        while ckpt.find_latest(trainer.run_dir) != tag:  # rank 0's writer publishes it
            time.sleep(0.005)
        published.append(time.perf_counter() - start)
    return {"stall_ms": _median_ms(stalls), "published_ms": _median_ms(published)}


def worker(args) -> None:
    import torch

    from dvdp_hr.train.config import load_config
    from dvdp_hr.train.loop import Trainer

    overrides = [f"data.shards={args.shards}", f"model.preset={args.preset}", "logging.wandb_mode=disabled",
                 "logging.progress=false", "logging.sample_count=0", "train.max_images=100000000",
                 "checkpoint.every_images=100000000", "ema.decays=[0.999]"]
    trainer = Trainer(load_config(os.path.join(REPO, "configs", "tiny_cpu.yaml"), overrides), args.run_dir)
    result = {"steps": measure_steps(trainer, PhaseTimer(), args.steps),
              "ema": measure_ema(trainer, args.ema_repeats),
              "checkpoint_foreground": measure_checkpoint(trainer, args.saves, background=False),
              "checkpoint_background": measure_checkpoint(trainer, args.saves, background=True)}
    trainer.checkpoints.close()
    gathered = [None] * trainer.env.world_size
    torch.distributed.all_gather_object(gathered, result)
    if trainer.env.rank == 0:
        with open(os.path.join(args.run_dir, "bench.json"), "w") as fh:
            json.dump(gathered, fh)


# ---- launcher side ----
def make_shards(folder: str) -> str:
    from data_tools.make_shards import main as make_shards_main
    from dvdp_hr.train.demo_data import make_image_folder

    make_image_folder(os.path.join(folder, "img"), count=96, size=64)
    make_shards_main(["--source", os.path.join(folder, "img"), "--out", os.path.join(folder, "shards"),
                      "--resolutions", "64,32,16", "--num-shards", "8", "--no-progress"])
    return os.path.join(folder, "shards")


def merge(per_rank: list[dict]) -> dict:
    """Median over ranks of every figure."""
    def walk(values):
        if isinstance(values[0], dict):
            return {k: walk([v[k] for v in values]) for k in values[0]}
        return statistics.median(values)
    return walk(per_rank)


def report(args, merged: dict, seconds: float) -> None:
    from common import write_results

    steps, ema = merged["steps"], merged["ema"]
    fg, bg = merged["checkpoint_foreground"], merged["checkpoint_background"]
    rows = ["2 ranks (torchrun, gloo), DeepSpeed ZeRO-2 fp32, tiny_cpu schedule (64 -> 16 px), "
            f"preset {args.preset}; medians over steps, then over ranks. Wall time of the bench: {seconds:.0f} s.", "",
            "| step phase | ms |", "|---|---|"]
    rows += [f"| {phase} | {ms:.1f} |" for phase, ms in steps.items()]
    rows += ["", "| EMA update | ms | collectives |", "|---|---|---|",
             f"| partitioned (ours: each rank's own fp32 slice, foreach lerp) | {ema['partitioned_ms']:.2f} | 0 |",
             f"| full-parameter gather (previous) | {ema['full_gather_ms']:.2f} | one per parameter |",
             f"| ratio previous / ours | {ema['full_gather_ms'] / ema['partitioned_ms']:.1f}x | |",
             "", f"EMA elements per rank: {ema['local_elements']:,.0f} of {ema['parameters']:,.0f}.",
             "", "| checkpoint | training blocked (ms) | published after (ms) |", "|---|---|---|",
             f"| foreground | {fg['stall_ms']:.0f} | {fg['published_ms']:.0f} |",
             f"| background writer (ours) | {bg['stall_ms']:.0f} | {bg['published_ms']:.0f} |",
             f"| stall ratio foreground / background | {fg['stall_ms'] / bg['stall_ms']:.1f}x | |"]
    write_results(os.path.basename(args.out), {"args": vars(args), "result": merged, "seconds": seconds}, rows)
    print("\n".join(rows))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        shards, run_dir = make_shards(tmp), os.path.join(tmp, "run")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": REPO}
        env.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(REPO, ".cache", "torch_extensions"))
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        os.path.abspath(__file__), "--worker", "--shards", shards, "--run-dir", run_dir,
                        "--preset", args.preset, "--steps", str(args.steps), "--ema-repeats", str(args.ema_repeats),
                        "--saves", str(args.saves)], check=True, env=env, cwd=REPO)
        seconds = time.perf_counter() - start
        with open(os.path.join(run_dir, "bench.json")) as fh:
            merged = merge(json.load(fh))
    args.out = os.path.relpath(args.out, REPO)
    os.chdir(REPO)
    report(args, merged, seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
