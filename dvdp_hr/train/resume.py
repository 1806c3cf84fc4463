"""What a resumed run must share with the checkpoint it continues."""
from __future__ import annotations

import os

from dvdp_hr.distributed.checkpoint import write_atomic
from dvdp_hr.train.confutil import ConfigError

# Sections that define the weights' meaning and the data order; optimisation length, logging
# and checkpoint cadence may change between resumes.
# model.grad_checkpointing / channels_last / compile / attention change memory and speed, not the
# weights' meaning: they stay free, so an out-of-memory stage can be fixed on resume.
FROZEN_KEYS = ("schedule", "model.mode", "model.preset", "model.stage_presets", "model.prediction", "model.dropout",
               "data.num_workers", "data.shuffle_buffer", "data.flip", "train.seed",
               "train.stages", "train.stage_weights", "train.stage_weighting", "train.micro_batch", "train.zero_stage",
               "train.precision", "ema.decays", "ema.halflife_images")


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def check_resumable(meta: dict, cfg, world_size: int, reshard: bool = False) -> None:
    """`reshard`: a different world size is accepted (a non-exact resume, see checkpointing)."""
    saved_world = meta["world_size"]
    if saved_world != world_size and not reshard:
        raise ConfigError(
            f"The latest checkpoint was written by {saved_world} ranks but this run has {world_size}. Per-rank "
            f"data positions and ZeRO shards are tied to the world size: relaunch with {saved_world} processes "
            f"to resume exactly, or add --reshard to resume on {world_size} (not exact: weights, optimizer "
            f"state and EMA are kept, the data streams restart).")
    current, saved = cfg.to_dict(), _saved_config(meta["config"])
    for key in FROZEN_KEYS:
        if _lookup(saved, key) != _lookup(current, key):
            raise ConfigError(
                f"'{key}' differs from the checkpoint being resumed ({_lookup(saved, key)!r} there, "
                f"{_lookup(current, key)!r} now). Use the original value or a new --run-dir.")


def _saved_config(tree: dict) -> dict:
    """A checkpoint's config with the keys added since it was written at their defaults (which keep
    the old behaviour), and a pre-issue-11 "v" read as "v_orthonormal": neither is a change."""
    from dvdp_hr.train.config import RunConfig, upgrade_legacy_tree
    from dvdp_hr.train.confutil import from_dict, to_dict

    return to_dict(from_dict(RunConfig, upgrade_legacy_tree(tree)))


def save_run_config(folder: str, cfg) -> str:
    path = os.path.join(folder, "config.yaml")
    write_atomic(path, cfg.to_yaml())
    return path
