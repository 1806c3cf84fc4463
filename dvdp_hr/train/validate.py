"""Up-front consistency checks of a RunConfig; every error names the offending key."""
from __future__ import annotations

from dvdp_hr.diffusion import DVDPSchedule
from dvdp_hr.train.confutil import ConfigError

CHOICES = {
    "train.zero_stage": (1, 2, 3),
    "train.precision": ("fp32", "bf16"),
    "optim.name": ("adamw", "fused_adam"),
    "optim.decay": ("constant", "cosine", "linear"),
    "logging.wandb_mode": ("offline", "online", "disabled"),
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
                "ema.every_steps", "logging.every_steps", "optim.lr"):
        value = _get(cfg, key)
        if not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{key} must be a positive number, got {value!r}.")
    for decay in cfg.ema.decays:
        if not 0.0 < float(decay) < 1.0:
            raise ConfigError(f"ema.decays entries must lie in (0, 1), got {decay!r}.")
    if not cfg.optim.grad_clip > 0:
        raise ConfigError(f"optim.grad_clip must be > 0 (got {cfg.optim.grad_clip}): the non-finite step guard "
                          f"relies on the global grad norm; use e.g. 1e9 to leave gradients unclipped.")
    if not 0.0 <= cfg.optim.min_lr_ratio <= 1.0:
        raise ConfigError(f"optim.min_lr_ratio must lie in [0, 1], got {cfg.optim.min_lr_ratio}.")


def _check_ranges(cfg) -> None:
    checks = (
        ("data.num_workers", cfg.data.num_workers >= 0, "must be >= 0"),
        ("data.shuffle_buffer", cfg.data.shuffle_buffer >= 1, "must be >= 1"),
        ("train.seed", cfg.train.seed >= 0, "must be >= 0"),
        ("train.snr_gamma", cfg.train.snr_gamma > 0, "must be > 0"),
        ("train.max_nonfinite", cfg.train.max_nonfinite >= 0, "must be >= 0"),
        ("logging.sample_every_images", cfg.logging.sample_every_images >= 0, "must be >= 0 (0 = off)"),
        ("logging.sample_count", cfg.logging.sample_count >= 0, "must be >= 0 (0 = no sample grids)"),
        ("optim.betas", len(cfg.optim.betas) == 2 and all(0 <= b < 1 for b in cfg.optim.betas),
         "must be two numbers in [0, 1)"),
        ("optim.weight_decay", cfg.optim.weight_decay >= 0, "must be >= 0"),
        ("optim.warmup_images", cfg.optim.warmup_images >= 0, "must be >= 0"),
    )
    for key, ok, rule in checks:
        if not ok:
            raise ConfigError(f"{key} {rule}, got {_get(cfg, key)!r}.")
    if len(set(cfg.ema.decays)) != len(cfg.ema.decays):
        raise ConfigError(f"ema.decays must be distinct, got {cfg.ema.decays!r}.")


def _check_sampling(cfg, num_stages: int) -> None:
    if cfg.logging.sample_every_images and cfg.logging.sample_steps < num_stages:
        raise ConfigError(f"logging.sample_steps must be >= the number of stages ({num_stages}), "
                          f"got {cfg.logging.sample_steps}.")


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
                                        threshold=s.band_stats.snr_threshold)
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
    try:
        return DVDPSchedule(resolution=s.resolution, root_resolution=s.root_resolution,
                            turning_points=s.turning_points, num_steps=s.num_steps,
                            beta_schedule=s.beta_schedule, ramp=s.ramp)
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


def _check_model(cfg) -> None:
    try:
        cfg.model.validate()
    except ValueError as err:
        raise ConfigError(f"model: {err}") from None


def validate_config(cfg) -> None:
    _check_choices(cfg)
    _check_positive(cfg)
    _check_ranges(cfg)
    resolve_turning_points(cfg)
    schedule = build_schedule(cfg)
    _check_per_stage_lists(cfg, schedule.num_stages)
    _check_sampling(cfg, schedule.num_stages)
    _check_model(cfg)


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

    shards = cfg.data.shards
    if not shards:
        raise ConfigError("data.shards is not set: pass --shards DIR (a make_shards output) or a URL pattern with {res}.")
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
