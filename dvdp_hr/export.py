"""Export for other tools: one safetensors file with the model and schedule config in its metadata.

Weights come from a checkpoint's EMA (default) or, with raw=True, from the trained fp32 weights
consolidated from the ZeRO shards (raw.safetensors: in the final and stop checkpoints, or in every
one with checkpoint.raw_weights=every). Per-stage networks trained in separate runs are merged: the runs must share
one schedule and model config and train disjoint stages that together cover every stage.
Loading never unpickles: safetensors only.
"""
from __future__ import annotations

import contextlib
import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

# /2 (issue 11): model.prediction "v" is the unit-scale v of dvdp-math.md s11; a /1 file's "v" is
# read as "v_orthonormal", the definition it was trained with.
FORMAT = "dvdp_hr.export/2"
LEGACY_FORMATS = ("dvdp_hr.export/1",)
SCHEDULE_KEYS = ("resolution", "root_resolution", "num_steps", "turning_points", "beta_schedule", "ramp")
OPTIONAL_SCHEDULE_KEYS = ("shift_base", "sampling_grid")  # absent in configs written before issue 11


class ExportError(ValueError):
    pass


def schedule_dict(cfg_dict: dict) -> dict:
    schedule = cfg_dict["schedule"]
    return {k: schedule[k] for k in (*SCHEDULE_KEYS, *OPTIONAL_SCHEDULE_KEYS) if k in schedule}


def band_variances_of(cfg_dict: dict) -> list | None:
    """schedule.band_stats.sigma_perp2 of a run's config (the sampler's variance correction), or None."""
    band = cfg_dict["schedule"].get("band_stats") or {}
    return list(band["sigma_perp2"]) if band.get("sigma_perp2") else None


def build_from_dicts(model_dict: dict, sched_dict: dict, meta_device: bool = False):
    from dvdp_hr.diffusion import DVDPSchedule
    from dvdp_hr.models import ModelConfig, build_denoiser
    from dvdp_hr.train.confutil import from_dict

    schedule = DVDPSchedule(**sched_dict)
    model_cfg = from_dict(ModelConfig, dict(model_dict, compile=False), "model.")
    with torch.device("meta") if meta_device else contextlib.nullcontext():
        return build_denoiser(model_cfg, schedule), schedule


def _run_weights(run_dir: str, tag: str, meta: dict, raw: bool, decay: float | str | None) -> tuple[dict, str]:
    from dvdp_hr.distributed.checkpoint import RAW_WEIGHTS, checkpoints_dir
    from dvdp_hr.train.ema import ema_filename

    if raw:
        path = os.path.join(checkpoints_dir(run_dir), tag, RAW_WEIGHTS)
        if not os.path.isfile(path):
            raise ExportError(_no_raw_weights_message(run_dir, tag))
        return load_file(path), "raw"
    name = ema_filename(_ema_label(decay if decay is not None else meta["ema_decays"][0]))
    path = os.path.join(checkpoints_dir(run_dir), tag, name)
    if not os.path.isfile(path):
        raise ExportError(f"{path} not found: this run keeps the EMAs {meta['ema_decays']}; pass one of them.")
    return load_file(path), name[:-len(".safetensors")]


def _ema_label(value) -> float | str:
    """An EMA as the checkpoint names it: a decay (0.9999) or a half-life label (hl500000)."""
    text = str(value)
    return text if text.startswith("hl") else float(text)


def _no_raw_weights_message(run_dir: str, tag: str) -> str:
    from dvdp_hr.distributed.checkpoint import RAW_WEIGHTS, checkpoints_dir, list_complete

    root = checkpoints_dir(run_dir)
    with_raw = [t for t in list_complete(run_dir) if os.path.isfile(os.path.join(root, t, RAW_WEIGHTS))]
    where = (f"checkpoints with them: {', '.join(with_raw)} (pass one with --checkpoint)" if with_raw
             else "no checkpoint of this run has them yet")
    return (f"checkpoint {tag} of {run_dir} holds no consolidated raw weights ({RAW_WEIGHTS}): with "
            f"checkpoint.raw_weights=final (the default) only the final and stop checkpoints have them; {where}. "
            f"Export the EMA weights instead (drop --raw), or train with checkpoint.raw_weights=every.")


def collect_run(run_dir: str, tag: str | None = None, raw: bool = False, decay: float | str | None = None) -> dict:
    """Weights, configs and trained stages of one run's checkpoint (the latest by default)."""
    from dvdp_hr.distributed.checkpoint import find_latest, read_meta

    tag = tag or find_latest(run_dir)
    if tag is None:
        raise ExportError(f"{run_dir} has no complete checkpoint (RUN/checkpoints/latest missing).")
    meta = read_meta(run_dir, tag)
    state, weights = _run_weights(run_dir, tag, meta, raw, decay)
    from dvdp_hr.train.config import upgrade_legacy_tree

    cfg = upgrade_legacy_tree(meta["config"])  # a run from before issue 11 keeps its v
    return {"run_dir": os.path.abspath(run_dir), "tag": tag, "weights": weights, "state": state,
            "model": cfg["model"], "schedule": schedule_dict(cfg), "stages": meta["trained_stages"],
            "images": meta["counters"]["images"], "band_variances": band_variances_of(cfg)}


def _check_compatible(runs: list[dict]) -> None:
    first = runs[0]
    for run in runs[1:]:
        for key in ("schedule", "model"):
            if run[key] != first[key]:
                raise ExportError(f"{run['run_dir']} has a different {key} config than {first['run_dir']}: "
                                  f"{run[key]} vs {first[key]}; only runs of one model can be combined.")
    if len(runs) > 1 and first["model"]["mode"] != "per_stage":
        raise ExportError("Combining runs needs model.mode=per_stage (a shared network has no per-stage parts).")
    seen: dict[int, str] = {}
    for run in runs:
        for k in run["stages"]:
            if k in seen:
                raise ExportError(f"Stage {k} was trained by both {seen[k]} and {run['run_dir']}; stages must be disjoint.")
            seen[k] = run["run_dir"]
    num_stages = len(first["schedule"]["turning_points"]) + 1
    if len(runs) == 1:
        return  # a single run may export a subset; the metadata lists the stages it trained
    missing = sorted(set(range(num_stages)) - set(seen))
    if missing:
        raise ExportError(f"No run trained stage(s) {missing}; add the run that trained them with another --run-dir.")


def _stage_prefix(model: torch.nn.Module, k: int) -> str:
    target = model.stage_modules(k)
    return next(name for name, m in model.named_modules() if m is target) + "."


def merge_runs(runs: list[dict]) -> dict[str, torch.Tensor]:
    """Take each stage's network from the run that trained it."""
    _check_compatible(runs)
    if len(runs) == 1:
        return runs[0]["state"]
    model, _ = build_from_dicts(runs[0]["model"], runs[0]["schedule"], meta_device=True)
    merged = dict(runs[0]["state"])
    for run in runs:
        for k in run["stages"]:
            prefix = _stage_prefix(model, k)
            merged.update({n: v for n, v in run["state"].items() if n.startswith(prefix)})
    return merged


def export(run_dirs: list[str], out: str, tag: str | None = None, raw: bool = False,
           decay: float | str | None = None) -> dict:
    """Write `out` (safetensors) and its sidecar JSON; returns the metadata."""
    if tag is not None and len(run_dirs) > 1:
        raise ExportError("--checkpoint names one run's tag; with several --run-dir use each run's latest.")
    runs = [collect_run(d, tag, raw, decay) for d in run_dirs]
    state = {k: v.detach().float().contiguous() for k, v in merge_runs(runs).items()}
    info = {"format": FORMAT, "model": runs[0]["model"], "schedule": runs[0]["schedule"],
            "band_variances": runs[0]["band_variances"],
            "sources": [{k: r[k] for k in ("run_dir", "tag", "weights", "stages", "images")} for r in runs]}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_file(state, out, metadata={"format": FORMAT, "dvdp_hr": json.dumps(info)})
    with open(os.path.splitext(out)[0] + ".json", "w") as fh:
        json.dump(info, fh, indent=1)
    return info


def read_export_info(path: str) -> dict:
    """Metadata of an export file; anything else fails with a clear error, nothing is unpickled."""
    if os.path.isdir(path):
        raise ExportError(f"{path} is a folder (a run directory?), not an export file: run `dvdp-hr export "
                          f"--run-dir {path} --out model.safetensors` first, or use dvdp_hr.export.load_run.")
    if not os.path.isfile(path):
        raise ExportError(f"{path} does not exist.")
    try:
        with safe_open(path, framework="pt") as fh:
            metadata = fh.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for foreign files
        raise ExportError(f"{path} is not a dvdp_hr export (not a safetensors file: {err}). "
                          f"Create one with `dvdp-hr export --run-dir RUN --out model.safetensors`.") from None
    if metadata.get("format") not in (FORMAT, *LEGACY_FORMATS) or "dvdp_hr" not in metadata:
        raise ExportError(f"{path} is a safetensors file but not a dvdp_hr export (metadata format "
                          f"{metadata.get('format')!r}, expected {FORMAT!r}).")
    info = json.loads(metadata["dvdp_hr"])
    if metadata["format"] in LEGACY_FORMATS and info["model"].get("prediction") == "v":
        info["model"] = dict(info["model"], prediction="v_orthonormal")
    return info


def read_band_variances(model_path: str, checkpoint: str | None = None) -> list | None:
    """Band variances sigma_perp^2 from a model's config (export file or run directory), for
    `sample(..., variance_correction=...)`; None when the config has no band statistics."""
    if os.path.isdir(model_path):
        from dvdp_hr.distributed.checkpoint import find_latest, read_meta

        tag = checkpoint or find_latest(model_path)
        if tag is None:
            raise ExportError(f"{model_path} has no complete checkpoint (RUN/checkpoints/latest missing).")
        return band_variances_of(read_meta(model_path, tag)["config"])
    return read_export_info(model_path).get("band_variances")


def load_pretrained(path: str, device: str | torch.device = "cpu"):
    """(model, schedule) from an export file, ready for `dvdp_hr.diffusion.sample(model.predict_x0, ...)`."""
    info = read_export_info(path)
    model, schedule = build_from_dicts(info["model"], info["schedule"])
    model.load_state_dict(load_file(path), strict=True)
    return model.to(device).eval().requires_grad_(False), schedule


def load_run(run_dir: str, tag: str | None = None, raw: bool = False, decay: float | str | None = None):
    """(model, schedule) straight from a run directory's checkpoint."""
    run = collect_run(run_dir, tag, raw, decay)
    model, schedule = build_from_dicts(run["model"], run["schedule"])
    model.load_state_dict(run["state"], strict=True)
    return model.eval().requires_grad_(False), schedule
