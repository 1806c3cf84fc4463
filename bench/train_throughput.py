"""Training images/s per stage: DeepSpeed ZeRO-2 engine vs a plain torch loop (same model,
same AdamW, same batches, one process), to show the engine's overhead.

    python bench/train_throughput.py --config configs/tiny_cpu.yaml --steps 20 --out bench/results/train_throughput.cpu
    python bench/train_throughput.py --config configs/ffhq1024.yaml --stages 4,2,0 --precision bf16 ...   # GPU

Data are random images (this measures the trainer, not the loader). Writes OUT.json and OUT.md.
"""
import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dvdp_hr.diffusion import training_loss  # noqa: E402
from dvdp_hr.distributed.env import setup_env  # noqa: E402
from dvdp_hr.train.config import deepspeed_config, load_config  # noqa: E402
from dvdp_hr.train.setup import build_model, build_schedule  # noqa: E402


def batch(schedule, k, size, device, generator):
    res = schedule.stage_resolution(k)
    x0 = torch.rand(size, 3, res, res, generator=generator) * 2 - 1
    t = schedule.sample_timesteps(k, size, generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    return x0.to(device), t, noise.to(device), schedule.q_sample(x0, t, noise).to(device)


def time_steps(step_fn, steps: int, warmup: int, sync) -> float:
    for _ in range(warmup):
        step_fn()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step_fn()
    sync()
    return time.perf_counter() - start


def plain_step_fn(cfg, schedule, model, optimizer, k, device, dtype):
    g = torch.Generator().manual_seed(k)

    def step():
        x0, t, noise, y = batch(schedule, k, cfg.train.micro_batch[k], device, g)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = model(y, t.to(device))
        loss = training_loss(schedule, out.float(), x0, noise, t, cfg.model.prediction).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def engine_step_fn(cfg, schedule, engine, k):
    g = torch.Generator().manual_seed(k)

    def step():
        x0, t, noise, y = batch(schedule, k, cfg.train.micro_batch[k], engine.device, g)
        out = engine(y.to(engine.dtype), t.to(engine.device))
        loss = training_loss(schedule, out.float(), x0, noise, t, cfg.model.prediction).mean()
        engine.backward(loss, boundary=True)
        engine.step([cfg.optim.lr])
    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="configs/tiny_cpu.yaml")
    p.add_argument("--stages", help="comma-separated stages (default: all)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per variant; the best is kept")
    p.add_argument("--precision", default=None, help="fp32 or bf16 (default: the config's)")
    p.add_argument("--out", default="bench/results/train_throughput.cpu")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    overrides = ["train.zero_stage=2", *args.overrides] + ([f"train.precision={args.precision}"] if args.precision else [])
    cfg = load_config(args.config, overrides)
    schedule = build_schedule(cfg)
    stages = [int(s) for s in args.stages.split(",")] if args.stages else list(range(schedule.num_stages))
    setup_env()
    from dvdp_hr.distributed.engine import Engine, init_distributed

    init_distributed()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
    plain = build_model(cfg, schedule).to(device)
    optimizer = torch.optim.AdamW(plain.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
    engine = Engine(build_model(cfg, schedule), deepspeed_config(cfg))
    rows = []
    for k in stages:
        n = cfg.train.micro_batch[k] * args.steps
        plain_fn = plain_step_fn(cfg, schedule, plain, optimizer, k, device, dtype)
        engine_fn = engine_step_fn(cfg, schedule, engine, k)
        # Interleaved rounds, best of each: robust to other load on a shared machine.
        t_plain = min(time_steps(plain_fn, args.steps, args.warmup, sync) for _ in range(args.rounds))
        t_engine = min(time_steps(engine_fn, args.steps, args.warmup, sync) for _ in range(args.rounds))
        rows.append({"stage": k, "resolution": schedule.stage_resolution(k), "micro_batch": cfg.train.micro_batch[k],
                     "plain_img_s": n / t_plain, "zero2_img_s": n / t_engine, "overhead": t_engine / t_plain - 1})
        print(json.dumps(rows[-1]), flush=True)
    write_results(args, cfg, device, rows)
    return 0


def write_results(args, cfg, device, rows) -> None:
    machine = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
               "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "loadavg_1m": os.getloadavg()[0],
               "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    result = {"command": "python " + " ".join(sys.argv), "config": args.config, "precision": cfg.train.precision,
              "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "machine": machine, "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as fh:
        json.dump(result, fh, indent=1)
    lines = [f"# Training throughput: ZeRO-2 engine vs plain torch ({machine['device']}, {cfg.train.precision})", "",
             f"Command: `{result['command']}`  ", f"Machine: {machine}", "",
             "| stage | res | micro-batch | plain img/s | ZeRO-2 img/s | engine overhead |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['resolution']} | {r['micro_batch']} | {r['plain_img_s']:.1f} | "
              f"{r['zero2_img_s']:.1f} | {100 * r['overhead']:+.1f}% |" for r in rows]
    with open(args.out + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
