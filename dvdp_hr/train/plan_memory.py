"""The dry-run's memory and data-reading table: OUR network's measured memory per GPU (memory.py),
the largest micro-batches that fit, and how many times each stage's shards are read per epoch."""
from __future__ import annotations

from pathlib import Path

from dvdp_hr.train.memory import GIB, RESERVE_USE, MemoryPlan, StageFit, memory_plan

HEADER = (f"{'stage':>5} {'res':>5} {'micro':>6} {'ckpt':>5} {'act GiB/img':>12} {'peak GiB/img':>13} "
          f"{'GiB@micro':>10} {'max micro':>10} {'max w/ ckpt':>12} {'max sample':>11} {'shards':>7} "
          f"{'slots':>6} {'read amp':>9} {'fits':>5}")


def _gib(value: float) -> str:
    return f"{value / GIB:.3g}"


def _split_rule_amplification(num_shards: int, slots: int) -> float:
    """Fallback from the split rule in dvdp_hr/data/shards.py: with fewer shards than reading slots
    every slot reads every shard (slots x the reading), otherwise each shard is read once."""
    return float(slots) if num_shards < slots else 1.0


def read_amplification_fn():
    """(function, label): data.shards.read_amplification once it exists, else the split-rule fallback."""
    try:
        from dvdp_hr.data.shards import read_amplification
        return read_amplification, "dvdp_hr.data.shards.read_amplification"
    except ImportError:
        return _split_rule_amplification, ("split-rule fallback (dvdp_hr.data.shards.read_amplification not "
                                           "available): slots when shards < slots, else 1")


def stage_workers(cfg, k: int) -> int:
    workers = cfg.data.num_workers
    return int(workers[k]) if isinstance(workers, list) else int(workers)


def shard_count(cfg, resolution: int) -> int | None:
    """Shards of one resolution set: the make_shards manifest of a local folder, else plan.shards_per_set."""
    shards = cfg.data.shards
    if shards and Path(shards).expanduser().is_dir():
        from dvdp_hr.data.shards import load_manifest

        try:
            return len(load_manifest(shards)["sets"][str(resolution)]["shards"])
        except (ValueError, KeyError, OSError):
            return None
    return cfg.plan.shards_per_set or None


def _amplification(amplify, shards: int | None, slots: int) -> tuple[str, str | None]:
    """(cell, problem): '-' when the shard count is unknown; the loader's refusal as the problem."""
    if shards is None:
        return "-", None
    try:
        return f"{amplify(shards, slots):.2f}", None
    except ValueError as err:  # TooFewShardsError: the loader would refuse this set
        return "refused", str(err)


def _row(cfg, r: StageFit, world_size: int, amplify, problems: list[str]) -> str:
    slots = world_size * max(1, stage_workers(cfg, r.stage))
    shards = shard_count(cfg, r.resolution)
    amp, problem = _amplification(amplify, shards, slots)
    if problem:
        problems.append(f"Stage {r.stage} ({r.resolution} px) data: {problem}.")
    total = _gib(r.train_total) if r.measured_gib is None else f"{r.measured_gib:g}*"
    return (f"{r.stage:>5} {r.resolution:>5} {r.micro_batch:>6} {'yes' if r.checkpointing else 'no':>5} "
            f"{_gib(r.saved_per_image):>12} {_gib(r.train_per_image):>13} {total:>10} {r.max_micro:>10} "
            f"{r.max_micro_checkpointed:>12} {r.max_sample:>11} {str(shards or '-'):>7} {slots:>6} {amp:>9} "
            f"{('yes' if r.fits else 'NO') if r.trained else '-':>5}")


def _fix(r: StageFit, usable: float) -> str:
    k = r.stage
    need = f"{r.measured_gib:g} GiB (plan.memory_gib)" if r.measured_gib is not None else f"{_gib(r.train_total)} GiB"
    options = []
    if r.max_micro >= 1:
        options.append(f"lower train.micro_batch[{k}] to {r.max_micro} and raise train.grad_accum[{k}] to keep "
                       f"the global batch")
    if not r.checkpointing and r.max_micro_checkpointed >= r.micro_batch:
        options.append(f"turn on gradient checkpointing for this stage (model.grad_checkpointing[{k}]: true; "
                       f"fits up to {r.max_micro_checkpointed})")
    if not options:
        options.append("use a smaller model preset or more GPU memory")
    return (f"Stage {k} ({r.resolution} px): micro_batch {r.micro_batch} needs {need} > {_gib(usable)} usable. "
            f"Fix: {'; or '.join(options)}.")


def _state_line(mp: MemoryPlan, ema_count: int) -> str:
    s = mp.state
    return (f"  per rank: weights {_gib(s.weights)} + gradients {_gib(s.grads)} + optimizer states "
            f"{_gib(s.optimizer)} + EMA ({ema_count} x fp32, per-rank partition) {_gib(s.ema)} + reduce buckets "
            f"{_gib(s.buckets)} = {_gib(s.total)} GiB")


def format_memory(cfg, schedule, world_size: int) -> list[str]:
    mp = memory_plan(cfg, schedule, world_size)
    amplify, amp_source = read_amplification_fn()
    ema_count = len(cfg.ema.halflife_images or cfg.ema.decays or [])
    lines = [f"Memory per GPU: OUR network, measured (dvdp_hr/train/memory.py: one step on fake tensors, "
             f"autograd-saved and peak live bytes); {mp.precision}, ZeRO-{mp.zero_stage}, world_size={world_size}, "
             f"{mp.acts.total_params / 1e6:.1f}M parameters ({mp.acts.trained_params / 1e6:.1f}M trained)",
             _state_line(mp, ema_count),
             f"  usable {_gib(mp.usable)} of {cfg.plan.gpu_memory_gib:g} GiB "
             f"({cfg.plan.memory_reserve_fraction:.0%} reserve: {RESERVE_USE})",
             HEADER]
    problems: list[str] = []
    lines += [_row(cfg, r, world_size, amplify, problems) for r in mp.stages]
    lines.append("act GiB/img: tensors autograd saves per image (end of forward); peak GiB/img: per-image peak over "
                 "forward + loss + backward (the fit uses it); GiB@micro: state + activations at the configured "
                 "micro-batch (* = plan.memory_gib, measured on a GPU); max w/ ckpt: largest micro-batch with "
                 "gradient checkpointing on for that stage; max sample: standalone sampling batch (weights + one "
                 "denoiser step); fits: - for a stage this run does not train; slots: world_size x data workers; "
                 f"read amp: {amp_source}.")
    lines += [_fix(r, mp.usable) for r in mp.stages if not r.fits]
    return lines + problems


__all__ = ["format_memory", "shard_count", "stage_workers", "read_amplification_fn"]
