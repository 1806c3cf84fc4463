"""Checkpoints of a training run: lock and resume at start, save during training, status at exit.

The Trainer owns one CheckpointManager; loop.py keeps only thin calls into it.

A save costs the other ranks little: DeepSpeed writes every rank's ZeRO shard in parallel in the
foreground, each rank fsyncs and hashes its own files, one all_gather_object collects the
checksums, and rank 0's big files (EMA, raw weights, config, meta) are written, hashed and
published by a background thread while training goes on (checkpoint.background). Never two
saves in flight: a save, the exit status and close() first join the writer, and a writer's error
is raised on every rank at the next save or at exit.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from functools import partial

from dvdp_hr.distributed import checkpoint as ckpt
from dvdp_hr.distributed import integrity
from dvdp_hr.distributed.env import print0
from dvdp_hr.distributed.lock import LockHeld, RunLock
from dvdp_hr.distributed.objects import broadcast_from0, gather_all
from dvdp_hr.distributed.status import write_status
from dvdp_hr.distributed.writer import BackgroundWriter, WriterError
from dvdp_hr.train.confutil import ConfigError
from dvdp_hr.train.resume import check_resumable, save_run_config
from dvdp_hr.train.resume_choice import Resumed, choose_checkpoint, finished_checkpoint

log = logging.getLogger(__name__)


class CheckpointManager:
    def __init__(self, cfg, run_dir: str, env, engine, ema, streams, reshard: bool = False, stream_factory=None):
        """`streams`: the Trainer's {stage: StageStream}, replaced in place when a resume needs
        reseeded ones (`stream_factory(reseed)` builds them). `reshard`: a checkpoint written on
        another world size is resumed non-exactly instead of refused (`_reshard`)."""
        self.cfg, self.run_dir, self.env = cfg, run_dir, env
        self.engine, self.ema, self.streams = engine, ema, streams
        self.reshard, self.stream_factory = reshard, stream_factory
        self.data_reseed: int | None = None  # image count of the last reshard (kept in meta.json)
        self.is_rank0 = env.rank == 0
        self.writer = BackgroundWriter(cfg.checkpoint.background)
        self.lock: RunLock | None = None
        self.provenance: dict | None = None  # rank 0, once per attempt
        self._last_save = time.monotonic()

    # ---- start of an attempt ----
    def start(self) -> Resumed | None:
        """Lock the run and resume from the newest checkpoint that verifies on every rank, if any.
        A finished run returns at once, locking and writing nothing. RUN/config.yaml is written
        only once the whole resume succeeded: a rejected attempt leaves the run's files as they were."""
        finished = finished_checkpoint(self.run_dir, self.cfg, self.env.world_size, self.reshard)
        if finished is not None:
            return finished
        candidates = self._lock_run()
        chosen = choose_checkpoint(self.run_dir, candidates, self.env.rank, self.env.world_size)
        resumed = None
        if chosen is not None:
            check_resumable(chosen[1], self.cfg, self.env.world_size, self.reshard)
            if chosen[1]["world_size"] != self.env.world_size:
                resumed = self._reshard(*chosen)
            else:
                resumed = self._load(*chosen)
        if self.is_rank0:
            self.provenance = _provenance(self.cfg)
            save_run_config(self.run_dir, self.cfg)
            ckpt.remove_stale_tmp(self.run_dir)  # unpublished folders of a crashed attempt
        self._last_save = time.monotonic()
        return resumed

    def _lock_run(self) -> list[str]:
        """Rank 0 takes RUN/lock; every rank learns the outcome and rank 0's list of checkpoints."""
        outcome = {"error": None, "candidates": []}
        if self.is_rank0:
            try:
                self.lock = RunLock(self.run_dir, self.cfg.checkpoint.lock_stale_minutes)
                note = self.lock.acquire()
                if note:
                    print(note, flush=True)
                outcome["candidates"] = ckpt.resume_candidates(self.run_dir)
            except LockHeld as err:
                self.lock, outcome["error"] = None, str(err)
            except OSError as err:  # raised on rank 0 alone it would leave the others waiting below
                self.close()
                outcome["error"] = f"cannot lock or list {self.run_dir}: {err}"
        outcome = broadcast_from0(outcome)
        if outcome["error"]:
            raise ConfigError(outcome["error"])
        return outcome["candidates"]

    def _load(self, tag: str, meta: dict) -> Resumed:
        ckpt_dir = os.path.join(ckpt.checkpoints_dir(self.run_dir), tag)
        state = ckpt.load_rank_state(ckpt_dir, self.env.rank)
        if meta.get("data_reseed") is not None:  # the run was resharded before: its streams were reseeded then
            self._replace_streams(meta["data_reseed"])
        self._load_streams(state["data"], tag, meta)  # first: the cheapest check that can still fail
        self.engine.load(ckpt.checkpoints_dir(self.run_dir), tag)
        self.ema.load(ckpt_dir)
        ckpt.restore_rng(state["rng"])
        c = meta["counters"]
        print0(f"resuming from checkpoint {tag}: {c['images']} images, step {c['step']}")
        return self._resumed(meta)

    def _resumed(self, meta: dict) -> Resumed:
        self._warn_max_images(meta)
        window = {int(k): list(v) for k, v in meta.get("loss_window", {}).items()}
        return Resumed(dict(meta["counters"]), wandb_id=meta.get("wandb_id"), loss_window=window)

    def _replace_streams(self, reseed: int) -> None:
        self.data_reseed = int(reseed)
        fresh = self.stream_factory(self.data_reseed)
        self.streams.clear()
        self.streams.update(fresh)

    def _reshard(self, tag: str, meta: dict) -> Resumed:
        """Non-exact resume of a checkpoint written on another world size (--reshard): weights and
        optimizer state through a DeepSpeed universal checkpoint (RUN/reshard/<tag>, converted by
        rank 0, deleted once every rank loaded it; the checkpoint itself is only read), the full EMA
        files as always, counters continued, data streams restarted with a seed mixing in the image
        count. If the conversion fails, the fp32 weights are consolidated from the ZeRO shards and
        the optimizer state starts fresh (said in the log)."""
        from dvdp_hr.distributed.engine import consolidated_fp32, to_universal

        root, c = ckpt.checkpoints_dir(self.run_dir), meta["counters"]
        saved_world, world = meta["world_size"], self.env.world_size
        self._replace_streams(c["images"])
        universal_root = os.path.join(self.run_dir, "reshard")
        failure = None
        if self.is_rank0:
            try:
                to_universal(root, tag, os.path.join(universal_root, tag))
            except Exception as err:  # noqa: BLE001 - every rank must learn it and take the fallback
                log.exception("universal conversion of checkpoint %s failed", tag)
                failure = f"{type(err).__name__}: {err}"
        failure = broadcast_from0(failure)
        try:
            if failure is None:
                self.engine.load_universal(universal_root, tag)
                kept = "weights, optimizer state (DeepSpeed universal checkpoint) and EMA are kept"
            else:
                self.engine.set_master_weights(consolidated_fp32(root, tag))
                kept = (f"weights (consolidated fp32) and EMA are kept, the OPTIMIZER STATE RESTARTS "
                        f"(universal conversion failed: {failure})")
            gather_all(None)  # every rank has read the universal folder
        finally:
            if self.is_rank0:
                shutil.rmtree(universal_root, ignore_errors=True)
        self.ema.load(os.path.join(root, tag))
        print0(f"warning: --reshard: checkpoint {tag} was written by {saved_world} ranks, this run has {world}: "
               f"the resume is NOT exact. {kept}; images ({c['images']}) and step ({c['step']}) continue; the "
               f"data streams restart in a new order (seeded with the image count), so the images seen from "
               f"here differ from a {saved_world}-rank run's. New checkpoints record world size {world}.")
        return self._resumed(meta)

    def _warn_max_images(self, meta: dict) -> None:
        before = meta["config"]["train"]["max_images"]
        if before != self.cfg.train.max_images:
            print0(f"warning: train.max_images changed from {before} (checkpoint) to {self.cfg.train.max_images}: "
                   f"the learning-rate schedule follows images / train.max_images, so its decay "
                   f"(optim.decay={self.cfg.optim.decay}) is stretched over the new total from here on.")

    def _load_streams(self, data_state: dict, tag: str, meta: dict) -> None:
        original = meta["config"]["data"]["shards"]
        for k, stream in self.streams.items():
            try:
                stream.load_state_dict(data_state[str(k)])
            except ValueError as err:
                raise ConfigError(
                    f"data.shards: the stage-{k} data stream of checkpoint {tag} cannot continue on "
                    f"data.shards={self.cfg.data.shards} ({err}). The checkpoint was trained on "
                    f"data.shards={original}: resume with --shards {original}, or start a new --run-dir."
                ) from None

    # ---- saving ----
    def due(self) -> bool:
        """This rank's clock says checkpoint.every_minutes have passed since the last save (only
        rank 0's answer may decide, so every rank saves at the same step)."""
        minutes = self.cfg.checkpoint.every_minutes
        return minutes > 0 and time.monotonic() - self._last_save >= 60.0 * minutes

    def wants_raw(self, final: bool) -> bool:
        return final or self.cfg.checkpoint.raw_weights == "every"

    def save(self, counters: dict, wandb_id, loss_window: dict, final: bool = False) -> str:
        """Collective. Returns the checkpoint's folder (published by the writer, see module doc)."""
        previous_failure = self._join_writer()  # never two saves in flight
        tag = ckpt.make_tag(counters["images"])
        raw = self.engine.full_state_dict(keep=self.is_rank0) if self.wants_raw(final) else None  # collective
        emas = self.ema.state_dicts(keep=self.is_rank0)  # collective; CPU snapshots on rank 0
        folder = self._write_rank_files(tag)
        reports = gather_all({"files": self._seal_own(folder), "failure": previous_failure})  # one small collective
        _raise_reported_failure(reports)
        self._last_save = time.monotonic()
        if self.is_rank0:
            others = {name: entry for r in reports for name, entry in r["files"].items()}
            meta = self._meta(counters, wandb_id, loss_window)
            self.writer.submit(tag, partial(self._write_rank0, tag, folder, emas, raw, others, meta))
        return os.path.join(ckpt.checkpoints_dir(self.run_dir), tag)

    def _write_rank_files(self, tag: str) -> str:
        """This rank's ZeRO shards (DeepSpeed; all ranks in parallel) and its RNG and data state."""
        root, tmp_tag = ckpt.checkpoints_dir(self.run_dir), ckpt.TMP_PREFIX + tag
        self.engine.save(root, tmp_tag)
        data = {str(k): s.state_dict() for k, s in self.streams.items()}
        ckpt.save_rank_state(os.path.join(root, tmp_tag), self.env.rank, {"rng": ckpt.capture_rng(), "data": data})
        return os.path.join(root, tmp_tag)

    def _seal_own(self, folder: str) -> dict:
        """fsync + checksums of this rank's files; rank 0 seals its own in the writer, off the training path."""
        if self.is_rank0:
            return {}
        return integrity.seal_all(folder, integrity.own_files(folder, self.env.rank, self.env.world_size))

    def _meta(self, counters: dict, wandb_id, loss_window: dict) -> dict:
        """Everything but `files`, copied now: the loop goes on changing its counters and windows."""
        return {"counters": dict(counters), "world_size": self.env.world_size, "wandb_id": wandb_id,
                "loss_window": {str(k): list(v) for k, v in loss_window.items()},
                "config": self.cfg.to_dict(), "ema_decays": self.ema.labels,
                "trained_stages": self.cfg.trained_stages(), "provenance": self.provenance,
                "data_reseed": self.data_reseed}

    def _write_rank0(self, tag: str, folder: str, emas: dict, raw: dict | None, others: dict, meta: dict) -> None:
        """Rank 0's part of a save (in the writer): its files, their checksums, then publication."""
        from safetensors.torch import save_file

        for name, state in emas.items():
            save_file(state, os.path.join(folder, name))
        if raw is not None:
            ckpt.save_raw_weights(folder, raw)  # `export --raw` reads this, never DeepSpeed's pickles
        save_run_config(folder, self.cfg)
        mine = [n for n in integrity.file_names(folder) if n not in others and n != ckpt.META]
        files = {**others, **integrity.seal_all(folder, mine)}
        if self.lock is not None and self.lock.lost:
            raise WriterError(f"not publishing checkpoint {tag}: {self.lock.lost}; this attempt must stop.")
        ckpt.publish(self.run_dir, tag, {**meta, "files": dict(sorted(files.items()))},
                     self.cfg.checkpoint.keep_last, self.cfg.checkpoint.keep_every_images)

    def _join_writer(self) -> str | None:
        """Rank 0: wait for the writer; its failure as a message every rank can raise (else None)."""
        if not self.is_rank0:
            return None
        try:
            self.writer.join()
        except WriterError as err:
            log.error("%s", err, exc_info=err.__cause__)
            return str(err)
        return None

    # ---- end of an attempt ----
    def write_status(self, state: str, counters: dict) -> None:
        """Collective: the last checkpoint is published (or its failure raised on every rank)
        before rank 0 writes status.json and before any rank may exit (torchrun stops the
        others when one exits non-zero, e.g. with the requeue code)."""
        failure = broadcast_from0(self._join_writer())
        if failure:
            raise WriterError(failure)
        # rank 0 writes; barrier: no rank exits (75) before the record is on disk
        write_status(self.run_dir, state, barrier=True, **counters)

    def close(self) -> None:
        """Always called when the Trainer exits, also on errors: publish what is in flight, stop
        the heartbeat, release the lock. Never raises (a writer failure is logged)."""
        try:
            self._join_writer()
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None


def _raise_reported_failure(reports: list[dict]) -> None:
    failures = [r["failure"] for r in reports if r["failure"]]
    if failures:
        raise WriterError(f"{failures[0]} Training stops: fix the cause (disk space, permissions) and rerun "
                          f"to resume from the last published checkpoint.")


def _provenance(cfg) -> dict:
    from dvdp_hr.data import manifest_digest

    try:
        digest = manifest_digest(cfg.data.shards)
    except (OSError, ValueError):
        digest = None
    return ckpt.provenance(digest)


__all__ = ["CheckpointManager", "Resumed"]
