"""The demo's summary: one table (markdown, printed and saved) and summary.json with every number
and every output's path."""
from __future__ import annotations

import json
import os
import textwrap


def training_seconds(stats: list[dict]) -> float:
    """Time inside the training loop, from stats.jsonl's windows (images / img_per_s): process start,
    DeepSpeed set-up and the final checkpoint are left out, the same for both arms."""
    seconds, before = 0.0, 0
    for record in sorted((r for r in stats if "img_per_s" in r), key=lambda r: r["step"]):
        if record["img_per_s"] > 0:
            seconds += (record["images"] - before) / record["img_per_s"]
        before = record["images"]
    return seconds


def _swd_cells(stage0: dict) -> list[str]:
    levels = sorted((k for k in stage0 if k.startswith("swd_") and k != "swd_mean"), key=lambda k: -int(k[4:]))
    return [f"{stage0['swd_mean']:.1f}", " / ".join(f"{stage0[k]:.1f}" for k in levels)]


def summary_lines(result: dict) -> list[str]:
    arms, floor = result["arms"], result["floor"]
    fid = any("fid" in a for a in arms)
    head = ("| model | train images | train TFLOPs | train time | sample GFLOPs/img | sample s/img | SWD x1e3 | "
            "SWD 64/32/16 px" + (" | FID | KID" if fid else "") + " |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for a in arms:
        cells = [a["label"], f"{a['train_images']:,}", f"{a['train_flops'] / 1e12:.1f}", f"{a['train_seconds']:.0f} s",
                 f"{a['sample_flops_per_image'] / 1e9:.1f}", f"{a['sample_seconds_per_image']:.3f}",
                 *_swd_cells(a["stages"]["0"])]
        cells += [f"{a['fid']:.1f}", f"{a['kid']:.4f}"] if fid else []
        lines.append("| " + " | ".join(cells) + " |")
    floor_cells = ["held-out photos (floor)", "", "", "", "", "", *_swd_cells(floor)] + (["", ""] if fid else [])
    lines.append("| " + " | ".join(floor_cells) + " |")
    return lines


def stage_lines(arm: dict) -> list[str]:
    lines = ["| stage | resolution | compared at t | noise std (px units) | SWD x1e3 |", "|---|---|---|---|---|"]
    for stage, r in sorted(arm["stages"].items(), key=lambda kv: -int(kv[0])):
        lines.append(f"| {stage} | {r['resolution']} | {r['t']} | {r['noise_std']:.3f} | {r['swd_mean']:.1f} |")
    return lines


def write_summary(result: dict, out_dir: str) -> str:
    """summary.json + summary.md in out_dir; returns the markdown."""
    dvdp = next(a for a in result["arms"] if a["name"] == "dvdp")
    text = "\n".join([
        *textwrap.wrap(f"Training: {result['nproc']} CPU processes (DeepSpeed ZeRO-2, gloo), same training denoiser FLOPs "
        f"(torch FlopCounterMode: matmuls + convolutions, forward + backward). Sampling: DDIM {result['steps']} "
        f"steps, {result['count']} images per model, 1 process. SWD: multi-scale sliced Wasserstein distance "
        f"(Karras et al. 2018) vs {result['count']} held-out photo crops; lower is better; the floor row "
        f"compares two held-out sets.", 100), "",
        *summary_lines(result), "",
        *textwrap.wrap("DVDP per stage (each stage's state as it ends vs the data at that stage plus the same noise; "
                       "dvdp_hr/metrics/stages.py):", 100), "", *stage_lines(dvdp), "",
        *(f"- {name}: {path}" for name, path in result["outputs"].items())])
    with open(os.path.join(out_dir, "summary.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    with open(os.path.join(out_dir, "summary.md"), "w") as fh:
        fh.write(text + "\n")
    return text
