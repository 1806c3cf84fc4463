"""Training-step and inference images/s: our UNet vs diffusers.UNet2DModel at matched size.

Both models get the same channels per level, residual blocks per level, attention levels, head
width, GroupNorm groups and residual (BigGAN-style) up/down sampling, so parameter counts match;
both are timed on the same batch, dtype and device, alternating the models step by step over
the repeats, and medians are reported. Last line: `train speed ratio ours/peer: X.XX`.

CPU (shared 2-core machine; see bench/results/unet_vs_peer.md for why one thread + CPU clock):
  python bench/unet_vs_peer.py --preset small --resolution 64 --batch 8 --repeats 15 \
      --threads 1 --clock cpu
GPU (bench/gpu_check.sh runs this at 64, 256 and 1024):
  python bench/unet_vs_peer.py --device cuda --dtype bf16 --preset ffhq1024 --resolution 256 \
      --batch 32 --repeats 5 --iters 3 --warmup 3
"""

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from dvdp_hr.models.presets import UNetPreset, get_preset
from dvdp_hr.models.unet import UNet

KINDS = ("train", "infer")


def build_peer(p: UNetPreset):
    from diffusers import UNet2DModel  # bench-only dependency

    att = [i in p.attn_levels for i in range(p.num_levels)]
    return UNet2DModel(
        in_channels=p.in_channels, out_channels=p.in_channels,
        block_out_channels=p.level_channels, layers_per_block=p.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in att),
        up_block_types=tuple("AttnUpBlock2D" if a else "ResnetUpsampleBlock2D"
                             for a in reversed(att)),
        downsample_type="resnet", upsample_type="resnet", resnet_time_scale_shift="scale_shift",
        attention_head_dim=p.head_channels, norm_num_groups=p.norm_groups,
        attn_norm_num_groups=p.norm_groups,  # diffusers drops the mid-attention norm otherwise
        norm_eps=1e-5)


class PeerAdapter(torch.nn.Module):
    def __init__(self, peer):
        super().__init__()
        self.peer = peer

    def forward(self, x, t):
        return self.peer(x, t, return_dict=False)[0]


class OursAdapter(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t):
        return self.unet(x, t)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def make_steps(model, x, t, dtype, device):
    """(train_step, infer_step) closures: bf16 autocast or fp32, MSE loss, AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
    target = torch.randn_like(x)

    def train_step():
        with amp:
            loss = torch.nn.functional.mse_loss(model(x, t).float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer_step():
        with amp:
            model(x, t)

    return train_step, infer_step


def time_call(fn, iters, device, clock: str) -> float:
    """Seconds per call: wall clock (synchronised on CUDA) or this process's CPU time."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = now()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (now() - start) / iters


def peak_gib(device, resident: int) -> float | None:
    """Peak memory of the model just warmed up (weights, optimizer state, activations),
    excluding what was resident before it (the other model), then reset."""
    if device.type != "cuda":
        return None
    value = (torch.cuda.max_memory_allocated(device) - resident) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return value


def prepare(models, x, t, args, device):
    """Move, warm up (allocator, kernel choice, optimizer state) and return steps + peaks."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # for both models alike
    steps, peak = {}, {}
    for name, model in models.items():
        resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        model.to(device).train()
        xin = x
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
            xin = x.contiguous(memory_format=torch.channels_last)
        steps[name] = make_steps(model, xin, t, args.dtype, device)
        for fn in steps[name]:
            for _ in range(args.warmup):
                fn()
        peak[name] = peak_gib(device, resident)
    return steps, peak


def measure(steps, args, device) -> dict[str, list[float]]:
    """Alternate the models step by step (and who goes first each repeat), so a slow spell
    of the machine hits both models of a pair alike."""
    names = list(steps)
    times = {f"{n}_{k}": [] for n in names for k in KINDS}
    for rep in range(args.repeats):
        order = names if rep % 2 == 0 else names[::-1]
        for index, kind in enumerate(KINDS):
            for name in order:
                times[f"{name}_{kind}"].append(
                    time_call(steps[name][index], args.iters, device, args.clock))
        print(f"repeat {rep}: " + " ".join(f"{k}={v[-1] * 1e3:.1f}ms" for k, v in times.items()),
              flush=True)
    return times


def summarise(times, args) -> dict:
    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: args.batch / v for k, v in med.items()}
    paired = {k: statistics.median(p / o for o, p in zip(times[f"ours_{k}"], times[f"peer_{k}"]))
              for k in KINDS}
    return {"median_s": med, "images_per_s": ips, "paired_median_ratio": paired,
            "train_ratio": ips["ours_train"] / ips["peer_train"],
            "infer_ratio": ips["ours_infer"] / ips["peer_infer"], "times_s": times}


def run(args) -> dict:
    device = torch.device(args.device)
    preset = get_preset(args.preset)
    torch.manual_seed(0)
    models = {"ours": OursAdapter(UNet(preset, attention=args.attention)),
              "peer": PeerAdapter(build_peer(preset))}
    params = {k: count(m) for k, m in models.items()}
    print(f"params ours={params['ours']:,} peer={params['peer']:,} "
          f"ratio={params['ours'] / params['peer']:.4f}")
    if abs(params["ours"] / params["peer"] - 1) > 0.05:
        sys.exit("parameter counts differ by more than 5%: the comparison would not be matched")
    x = torch.randn(args.batch, preset.in_channels, args.resolution, args.resolution,
                    device=device)
    t = torch.randint(0, 1000, (args.batch,), device=device)
    steps, peak = prepare(models, x, t, args, device)
    result = {"settings": {k: v for k, v in vars(args).items() if k != "json"},
              "params": params, **summarise(measure(steps, args, device), args),
              "machine": machine_info(device), "command": "python " + " ".join(sys.argv)}
    if device.type == "cuda":
        result["peak_gib"] = peak
    return result


def machine_info(device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine()}
    try:
        import diffusers
        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--iters", type=int, default=1, help="steps per timed sample")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: torch's default)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: process CPU time, robust to other jobs on a shared CPU machine "
                         "(use with --threads 1); always wall on CUDA")
    ap.add_argument("--json", help="write the result dict here")
    args = ap.parse_args()
    if args.device.startswith("cuda"):
        args.clock = "wall"
    return args


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    print(json.dumps({k: result[k] for k in ("params", "images_per_s", "paired_median_ratio")}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print(f"inference speed ratio ours/peer: {result['infer_ratio']:.2f}")
    print(f"train speed ratio ours/peer: {result['train_ratio']:.2f}")


if __name__ == "__main__":
    main()
