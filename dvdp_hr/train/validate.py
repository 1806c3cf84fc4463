"""Up-front consistency checks of a RunConfig; every error names the offending key."""
from __future__ import annotations

import logging

from dvdp_hr.data.sizing import num_shards_option_for, shard_size_option_for
from dvdp_hr.diffusion import LOSS_WEIGHTINGS, DVDPSchedule
from dvdp_hr.diffusion.schedule import GRID_POLICIES
from dvdp_hr.train.confutil import ConfigError
from dvdp_hr.train.stage_shares import STAGE_WEIGHTINGS

log = logging.getLogger(__name__)

CHOICES = {
    "train.zero_stage": (1, 2, 3),
    "train.precision": ("fp32", "bf16"),
    "optim.name": ("adamw", "fused_adam"),
    "optim.decay": ("constant", "cosine", "linear"),
    "logging.wandb_mode": ("offline", "online", "disabled"),
    "distributed.communication_data_type": (None, "fp32", "bf16"),
    "checkpoint.raw_weights": ("final", "every"),
    "schedule.sampling_grid": GRID_POLICIES,
    "train.loss_weighting": LOSS_WEIGHTINGS,
    "train.stage_weighting": STAGE_WEIGHTINGS,
}


def _get(cfg, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _check_choices(cfg) -> None:
    for key, allowed in CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"{key}={_get(cfg, key)!r} is not one of {list(allowed)}.")


def _check_positive(cfg) -> None:
    for key in ("train.max_images", "checkpoint.every_images", "checkpoint.keep_last",
                "ema.every_steps", "logging.every_steps", "optim.lr", "distributed.timeout_minutes",
                "distributed.reduce_bucket_size", "distributed.allgather_bucket_size",
                "checkpoint.lock_stale_minutes", "logging.progress_every_seconds"):
        value = _get(cfg, key)
        if not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{key} must be a positive number, got {value!r}.")
    for decay in cfg.ema.decays:
        if not 0.0 < float(decay) < 1.0:
            raise ConfigError(f"ema.decays entries must lie in (0, 1), got {decay!r}.")
    for images in cfg.ema.halflife_images or []:
        if not isinstance(images, (int, float)) or isinstance(images, bool) or not images > 0:
            raise ConfigError(f"ema.halflife_images entries must be positive image counts, got {images!r}.")
    if not cfg.optim.grad_clip > 0:
        raise ConfigError(f"optim.grad_clip must be > 0 (got {cfg.optim.grad_clip}): the non-finite step guard "
                          f"relies on the global grad norm; use e.g. 1e9 to leave gradients unclipped.")
    if not 0.0 <= cfg.optim.min_lr_ratio <= 1.0:
        raise ConfigError(f"optim.min_lr_ratio must lie in [0, 1], got {cfg.optim.min_lr_ratio}.")


def _check_ranges(cfg) -> None:
    checks = (
        ("data.shuffle_buffer", cfg.data.shuffle_buffer >= 1, "must be >= 1"),
        ("train.seed", cfg.train.seed >= 0, "must be >= 0"),
        ("train.snr_gamma", cfg.train.snr_gamma > 0, "must be > 0"),
        ("train.sigma_data", cfg.train.sigma_data > 0, "must be > 0 (the data std in pixel units; EDM: 0.5)"),
        ("train.max_nonfinite", cfg.train.max_nonfinite >= 0, "must be >= 0"),
        ("logging.sample_every_images", cfg.logging.sample_every_images >= 0, "must be >= 0 (0 = off)"),
        ("logging.sample_count", cfg.logging.sample_count >= 0, "must be >= 0 (0 = no sample grids)"),
        ("optim.betas", len(cfg.optim.betas) == 2 and all(0 <= b < 1 for b in cfg.optim.betas),
         "must be two numbers in [0, 1)"),
        ("optim.weight_decay", cfg.optim.weight_decay >= 0, "must be >= 0"),
        ("optim.warmup_images", cfg.optim.warmup_images >= 0, "must be >= 0"),
        ("checkpoint.every_minutes", cfg.checkpoint.every_minutes >= 0, "must be >= 0 (0 = off)"),
        ("checkpoint.keep_every_images", cfg.checkpoint.keep_every_images >= 0, "must be >= 0 (0 = off)"),
        ("evaluation.every_images", cfg.evaluation.every_images >= 0, "must be >= 0 (0 = off)"),
        ("evaluation.count", cfg.evaluation.count >= 2, "must be >= 2"),
        ("evaluation.batch", cfg.evaluation.batch >= 0, "must be >= 0 (0 = the engine's default)"),
        ("distributed.zero3_prefetch_bucket_size", cfg.distributed.zero3_prefetch_bucket_size >= 0, "must be >= 0"),
    )
    for key, ok, rule in checks:
        if not ok:
            raise ConfigError(f"{key} {rule}, got {_get(cfg, key)!r}.")
    if len(set(cfg.ema.decays)) != len(cfg.ema.decays):
        raise ConfigError(f"ema.decays must be distinct, got {cfg.ema.decays!r}.")
    halflives = cfg.ema.halflife_images
    if halflives is not None and len({int(h) for h in halflives}) != len(halflives):
        raise ConfigError(f"ema.halflife_images must be distinct whole image counts, got {halflives!r}.")


def _check_num_workers(cfg, num_stages: int) -> None:
    """data.num_workers: one int >= 0 for every stage, or one per stage (finest first)."""
    workers = cfg.data.num_workers
    if isinstance(workers, list):
        if len(workers) != num_stages:
            raise ConfigError(
                f"data.num_workers needs one entry per stage ({num_stages} stages for {cfg.schedule.resolution} -> "
                f"{cfg.schedule.root_resolution}, finest first) or a single int for all, got {workers!r}.")
        if any(not _is_int(w) or w < 0 for w in workers):
            raise ConfigError(f"data.num_workers entries must be integers >= 0, got {workers!r}.")
    elif not _is_int(workers) or workers < 0:
        raise ConfigError(f"data.num_workers must be >= 0, got {workers!r}.")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def workers_for_stage(cfg, k: int) -> int:
    """DataLoader workers per rank for stage k (data.num_workers: one int, or one per stage)."""
    workers = cfg.data.num_workers
    return int(workers[k]) if isinstance(workers, list) else int(workers)


def reading_slots(cfg, k: int, world_size: int) -> int:
    """Readers of stage k's shard set: every rank's workers (num_workers=0 reads in the rank: 1)."""
    return world_size * max(1, workers_for_stage(cfg, k))


def _check_sampling(cfg, num_stages: int) -> None:
    if cfg.logging.sample_every_images and cfg.logging.sample_steps < num_stages:
        raise ConfigError(f"logging.sample_steps must be >= the number of stages ({num_stages}), "
                          f"got {cfg.logging.sample_steps}.")
    e = cfg.evaluation
    if e.every_images and e.steps < num_stages:
        raise ConfigError(f"evaluation.steps must be >= the number of stages ({num_stages}), got {e.steps}.")
    if bool(e.inception) != bool(e.ref_stats):
        raise ConfigError("evaluation.inception and evaluation.ref_stats go together (FID needs both): set both, "
                          f"or neither for SWD only; got inception={e.inception!r}, ref_stats={e.ref_stats!r}.")


def resolve_turning_points(cfg) -> None:
    """`schedule.turning_points: auto` -> the band-SNR rule of dvdp-math.md s8."""
    s = cfg.schedule
    if s.turning_points != "auto":
        if not isinstance(s.turning_points, list):
            raise ConfigError(f"schedule.turning_points must be a list of ints or 'auto', got {s.turning_points!r}.")
        return
    if s.band_stats is None or not s.band_stats.sigma_perp2:
        raise ConfigError("schedule.turning_points=auto needs schedule.band_stats.sigma_perp2 "
                          "(run data_tools/band_stats.py on the shards).")
    from dvdp_hr.diffusion import propose_turning_points

    _check_band_variances(s)
    try:
        points = propose_turning_points(s.resolution, s.root_resolution, list(s.band_stats.sigma_perp2),
                                        num_steps=s.num_steps, beta_schedule=s.beta_schedule,
                                        threshold=s.band_stats.snr_threshold, shift_base=s.shift_base)
    except ValueError as err:  # counts are checked above; what is left is the threshold or schedule
        raise ConfigError(f"schedule.band_stats: {err}") from None
    s.turning_points = [int(t) for t in points]


def _check_band_variances(s) -> None:
    """One positive band variance per stage boundary, finest first (1024->512, 512->256, ...)."""
    values = s.band_stats.sigma_perp2
    boundaries, res = [], s.resolution
    while res > s.root_resolution and res % 2 == 0:
        boundaries.append(f"{res}->{res // 2}")
        res //= 2
    if res != s.root_resolution:
        return  # not a power-of-2 pyramid: build_schedule names that problem
    if not isinstance(values, list) or len(values) != len(boundaries):
        raise ConfigError(
            f"schedule.band_stats.sigma_perp2 needs {len(boundaries)} entries, one per stage boundary "
            f"({', '.join(boundaries)}), got {values!r}; data_tools/band_stats.py prints them.")
    if any(not isinstance(v, (int, float)) or not v > 0 for v in values):
        raise ConfigError(f"schedule.band_stats.sigma_perp2 entries must be positive numbers, got {values!r}.")


def build_schedule(cfg) -> DVDPSchedule:
    s = cfg.schedule
    if s.shift_base is not None and not s.beta_schedule.startswith("cosine_"):
        raise ConfigError(f"schedule.shift_base={s.shift_base} only moves the shifted schedules; with "
                          f"beta_schedule={s.beta_schedule!r} remove it, or use cosine_shifted / cosine_interpolated.")
    try:
        return DVDPSchedule(resolution=s.resolution, root_resolution=s.root_resolution,
                            turning_points=s.turning_points, num_steps=s.num_steps,
                            beta_schedule=s.beta_schedule, ramp=s.ramp, shift_base=s.shift_base,
                            sampling_grid=s.sampling_grid)
    except ValueError as err:
        raise ConfigError(f"schedule: {err}") from None


def _check_per_stage_lists(cfg, num_stages: int) -> None:
    t = cfg.train
    for key in ("micro_batch", "grad_accum", "stage_weights", "global_batch"):
        values = getattr(t, key)
        if values is None:
            continue
        if not isinstance(values, list) or len(values) != num_stages:
            raise ConfigError(f"train.{key} needs one entry per stage ({num_stages} stages for "
                              f"{cfg.schedule.resolution} -> {cfg.schedule.root_resolution}), got {values!r}.")
        if key != "stage_weights" and any(not isinstance(v, int) or v < 1 for v in values):
            raise ConfigError(f"train.{key} entries must be positive integers, got {values!r}.")
    if t.stages is not None:
        if not t.stages or len(set(t.stages)) != len(t.stages) or any(
                not isinstance(k, int) or not 0 <= k < num_stages for k in t.stages):
            raise ConfigError(f"train.stages must be distinct stage indices in 0..{num_stages - 1}, got {t.stages!r}.")
    if t.stage_weights is not None:
        chosen = [t.stage_weights[k] for k in cfg.trained_stages()]
        if any(w < 0 for w in t.stage_weights) or sum(chosen) <= 0:
            raise ConfigError(f"train.stage_weights must be >= 0 with a positive sum over the trained stages, got {t.stage_weights!r}.")


def _check_model(cfg, num_stages: int) -> None:
    try:
        cfg.model.validate()
        cfg.model.checkpointed_stages(num_stages)
    except ValueError as err:
        raise ConfigError(f"model: {err}") from None


def validate_config(cfg) -> None:
    _check_choices(cfg)
    _check_positive(cfg)
    _check_ranges(cfg)
    resolve_turning_points(cfg)
    schedule = build_schedule(cfg)
    _check_per_stage_lists(cfg, schedule.num_stages)
    _check_num_workers(cfg, schedule.num_stages)
    _check_sampling(cfg, schedule.num_stages)
    _check_model(cfg, schedule.num_stages)


def check_world_size(cfg, world_size: int) -> None:
    """Global batch arithmetic: global = micro * accum * world_size, when a global batch is given."""
    t = cfg.train
    if t.global_batch is None:
        return
    for k in cfg.trained_stages():
        got = t.micro_batch[k] * t.grad_accum[k] * world_size
        if got != t.global_batch[k]:
            raise ConfigError(
                f"train.global_batch[{k}]={t.global_batch[k]} but train.micro_batch[{k}]={t.micro_batch[k]} x "
                f"train.grad_accum[{k}]={t.grad_accum[k]} x world_size={world_size} = {got}; fix one of them.")


def check_shards(cfg, schedule) -> None:
    """Every trained stage's resolution must exist in the shard set; in a make_shards folder every
    shard must be present with its manifest size (URL patterns are not probed)."""
    from dvdp_hr.data.shards import damaged_shards, stage_urls

    _require_shards(cfg)
    shards = cfg.data.shards
    problems = []
    for k in cfg.trained_stages():
        try:
            stage_urls(shards, schedule.stage_resolution(k))
            problems += damaged_shards(shards, schedule.stage_resolution(k))
        except ValueError as err:
            raise ConfigError(f"data.shards (stage {k}): {err}") from None
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise ConfigError(
            f"data.shards={shards}: {len(problems)} damaged shard(s):\n  {shown}\n"
            f"Run `python data_tools/inspect_shards.py {shards}`, then rerun make_shards with --resume "
            f"(same --source, --out {shards} and settings) to rewrite them.")


_warned: set[str] = set()  # warnings already logged by this process


def check_shard_count(cfg, schedule, world_size: int, warn: bool = True) -> list[str]:
    """Each trained stage's shard set must hold at least one shard per reading slot (world_size x
    that stage's workers): a slot reads only whole shards of its own (dvdp_hr.data.shards). Raises
    ConfigError naming every short stage and the fixes. Returns notes on a shuffle buffer larger than
    a slot's share of an epoch, and logs them once per process when `warn` (pass rank == 0)."""
    from dvdp_hr.data.shards import shard_set_size

    _require_shards(cfg)
    short, oversized = [], []
    for k in cfg.trained_stages():
        res = schedule.stage_resolution(k)
        try:
            num_shards, samples, found = shard_set_size(cfg.data.shards, res)
        except ValueError as err:
            raise ConfigError(f"data.shards (stage {k}): {err}") from None
        slots = reading_slots(cfg, k, world_size)
        if num_shards < slots:
            short.append((k, res, num_shards, samples, found, slots))
        elif samples is not None and cfg.data.shuffle_buffer > samples // slots:
            oversized.append((k, res, samples, slots))
    if short:
        raise ConfigError(_too_few_shards_message(cfg, world_size, short))
    notes = [_oversized_buffer_message(cfg, oversized)] if oversized else []
    for note in notes:
        if warn and note not in _warned:
            _warned.add(note)
            log.warning(note)
    return notes


def _require_shards(cfg) -> None:
    if not cfg.data.shards:
        raise ConfigError("data.shards is not set: pass --shards DIR (a make_shards output) or a URL pattern with {res}.")


def _too_few_shards_message(cfg, world_size: int, short: list[tuple]) -> str:
    lines = [f"data.shards={cfg.data.shards}: too few shards for the reading slots (ranks x data.num_workers, "
             f"num_workers=0 counting as 1); each slot reads only whole shards of its own."]
    for k, res, num_shards, _, _, slots in short:
        lines.append(f"  stage {k} ({res}x{res}): {num_shards} shards < {slots} slots "
                     f"({world_size} ranks x {max(1, workers_for_stage(cfg, k))} workers)")
    _, _, _, samples, found, slots = max(short, key=lambda stage: stage[-1])  # the most slots to feed
    lines.append("Fix: " + _remake_fix(samples, found, slots))
    lines.append("Or: " + _fewer_workers_fix(cfg, world_size, {k: n for k, _, n, *_ in short}))
    return "\n".join(lines)


def _remake_fix(samples: int | None, found: int | None, slots: int) -> str:
    if samples is None:  # a URL pattern: the image count is unknown here
        return (f"remake the shards with `dvdp-hr make-shards ... --num-shards N`, N a little above {slots} "
                f"(the shard size is rounded up, so N = {slots} can give a shard fewer), and count them.")
    if samples < slots:
        return f"{samples} images cannot fill {slots} shards: use fewer ranks or workers."
    return (f"remake the shards with `dvdp-hr make-shards ... --num-shards "
            f"{num_shards_option_for(found or samples, samples, slots)}` (or `--shard-size "
            f"{shard_size_option_for(samples, slots)}`) for these {samples:,} images.")


def _fewer_workers_fix(cfg, world_size: int, shards_of_short: dict[int, int]) -> str:
    if any(n < world_size for n in shards_of_short.values()):
        fewest = min(shards_of_short.values())
        return f"run on at most {fewest} ranks (with fewer shards than ranks no num_workers helps)."
    suggested = [workers_for_stage(cfg, k) for k in range(cfg.num_stages)]
    for k, num_shards in shards_of_short.items():
        suggested[k] = min(suggested[k], num_shards // world_size)
    as_override = "[" + ",".join(str(w) for w in suggested) + "]"
    return (f"fewer loader workers for the short stage(s): data.num_workers={as_override} "
            f"(one entry per stage, finest first; at most shards // ranks each).")


def _oversized_buffer_message(cfg, oversized: list[tuple]) -> str:
    shares = [(k, res, samples, slots, samples // slots) for k, res, samples, slots in oversized]
    where = "; ".join(f"stage {k} ({res}x{res}): ~{share:,} = {samples:,} samples / {slots} slots"
                      for k, res, samples, slots, share in shares)
    smallest = min(share for *_, share in shares)
    return (f"data.shuffle_buffer={cfg.data.shuffle_buffer} exceeds a reading slot's share of an epoch ({where}). "
            f"Such a buffer holds the slot's whole share: it mixes no better than one of that size, and the slot "
            f"parses its whole share before its first output and again at every epoch boundary. "
            f"Set data.shuffle_buffer <= {smallest:,} (e.g. {max(1, smallest // 2):,}).")
