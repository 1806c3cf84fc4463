"""The training loop, counted in images. Rerunning the same command resumes from RUN/checkpoints/latest.

Exactness: the stage of step n, the timesteps, the noise and the global RNG (dropout) are pure
functions of (seed, step, rank); data streams, weights, optimizer and EMA come from the checkpoint.
A run killed at any point and rerun therefore repeats the uninterrupted run bit for bit.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from dvdp_hr.diffusion import training_loss
from dvdp_hr.distributed import checkpoint as ckpt
from dvdp_hr.distributed.env import all_reduce_sum, print0, setup_env
from dvdp_hr.distributed.signals import REQUEUE_EXIT_CODE, StopFlag
from dvdp_hr.metrics.logging import RunLogger
from dvdp_hr.train.config import RunConfig, deepspeed_config
from dvdp_hr.train.confutil import ConfigError
from dvdp_hr.train.ema import EMA
from dvdp_hr.train.lr import learning_rate
from dvdp_hr.train.plan import stage_for_step, stage_weights, step_seed
from dvdp_hr.train.resume import check_resumable, save_run_config
from dvdp_hr.train.samples import draw_grid
from dvdp_hr.train.setup import build_model, build_schedule, make_streams, optimizer_groups
from dvdp_hr.train.validate import check_shards, check_world_size

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    pass


@dataclass
class Counters:
    step: int = 0
    images: int = 0
    nonfinite_in_a_row: int = 0
    skipped_total: int = 0


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: str):
        from dvdp_hr.distributed.engine import Engine, init_distributed

        self.cfg, self.run_dir = cfg, run_dir
        self.env = setup_env()
        init_distributed()
        self.schedule = build_schedule(cfg)
        check_world_size(cfg, self.env.world_size)
        check_shards(cfg, self.schedule)
        os.makedirs(ckpt.checkpoints_dir(run_dir), exist_ok=True)
        model = build_model(cfg, self.schedule)
        self.ema = EMA(model, cfg.ema.decays)  # before the engine partitions the weights
        groups, self.group_stages = optimizer_groups(model, cfg)
        self.engine = Engine(model, deepspeed_config(cfg), groups)
        self.ema.to(self.engine.device)
        self.streams = make_streams(cfg, self.schedule, self.env.rank, self.env.world_size)
        self.weights = stage_weights(cfg, self.schedule)
        self.counters, self.wandb_id = Counters(), None
        # per-stage [sum, count] of the reduced losses since the last stats line (kept in checkpoints)
        self.loss_window: dict[int, list] = {}
        self.finished_already = False
        self._resume_if_possible()
        self.iters = {k: iter(s) for k, s in self.streams.items()}
        self.logger = None
        if not self.finished_already:  # a finished run gets nothing new written (not even wandb files)
            self.logger = RunLogger(run_dir, self.env.rank == 0, cfg.logging.wandb_mode, cfg.logging.wandb_project,
                                    cfg.to_dict(), self.wandb_id, resume_step=self.counters.step)
            self.wandb_id = self.logger.wandb_id
        self.pending: list[tuple[int, int, int, float]] = []  # (step, stage, images, local loss)

    # ---- resume ----
    def _resume_if_possible(self) -> None:
        """Resume from the latest checkpoint, if any. RUN/config.yaml is written only once the
        whole resume succeeded: a rejected attempt leaves the run's files as they were."""
        tag = ckpt.find_latest(self.run_dir)
        meta = ckpt.read_meta(self.run_dir, tag) if tag is not None else None
        if meta is not None:
            check_resumable(meta, self.cfg, self.env.world_size)
            images, limit = meta["counters"]["images"], self.cfg.train.max_images
            if images >= limit:
                self.counters, self.finished_already = Counters(**meta["counters"]), True
                print0(f"already at {images} images >= train.max_images={limit}; nothing to train")
                return
            self._load_checkpoint(tag, meta)
        if self.env.rank == 0:
            save_run_config(self.run_dir, self.cfg)

    def _load_checkpoint(self, tag: str, meta: dict) -> None:
        ckpt_dir = os.path.join(ckpt.checkpoints_dir(self.run_dir), tag)
        state = ckpt.load_rank_state(ckpt_dir, self.env.rank)
        self._load_streams(state["data"], tag, meta)  # first: the cheapest check that can still fail
        self.engine.load(ckpt.checkpoints_dir(self.run_dir), tag)
        self.ema.load(ckpt_dir)
        ckpt.restore_rng(state["rng"])
        self.counters = Counters(**meta["counters"])
        self.wandb_id = meta.get("wandb_id")
        self.loss_window = {int(k): list(v) for k, v in meta.get("loss_window", {}).items()}
        c = self.counters
        print0(f"resuming from checkpoint {tag}: {c.images} images, step {c.step}")
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

    # ---- one optimizer step ----
    def _micro_batch(self, k: int, generator: torch.Generator):
        x0 = next(self.iters[k])
        t = self.schedule.sample_timesteps(k, x0.shape[0], generator=generator)
        res = self.schedule.stage_resolution(k)
        noise = torch.randn(x0.shape[0], x0.shape[1], res, res, generator=generator, dtype=x0.dtype)
        y_t = self.schedule.q_sample(x0, t, noise)
        return x0, t, noise, y_t

    def train_step(self) -> tuple[int, float, float, float]:
        """One optimizer step; returns (stage, mean loss, grad norm, learning rate used)."""
        cfg, step = self.cfg, self.counters.step
        k = stage_for_step(cfg.train.seed, step, self.weights)
        torch.manual_seed(step_seed(cfg.train.seed, step, self.env.rank, 1))  # dropout and friends
        generator = torch.Generator().manual_seed(step_seed(cfg.train.seed, step, self.env.rank, 2))
        accum, device, dtype = cfg.train.grad_accum[k], self.engine.device, self.engine.dtype
        total = 0.0
        for micro in range(accum):
            x0, t, noise, y_t = self._micro_batch(k, generator)
            output = self.engine(y_t.to(device=device, dtype=dtype), t)  # CPU t: the model moves it, no sync
            loss = training_loss(self.schedule, output, x0.to(device), noise.to(device), t,
                                 cfg.model.prediction, cfg.train.snr_gamma, y_t=y_t.to(device)).mean()
            self.engine.backward(loss / accum, boundary=micro == accum - 1)
            total += float(loss.detach()) / accum
        lr = learning_rate(self.counters.images, cfg.optim, cfg.train.max_images)
        grad_norm = self.engine.step([lr if k in stages else 0.0 for stages in self.group_stages])
        if (step + 1) % cfg.ema.every_steps == 0:
            self.ema.update(self.engine.master_parameters(), self.engine.module.buffers())
        return k, total, grad_norm, lr

    # ---- bookkeeping between steps ----
    def _agree(self, stop: StopFlag, local_nonfinite: bool) -> tuple[bool, bool]:
        """All ranks agree on 'stop requested' and 'this step was not finite' (one all-reduce)."""
        flags = all_reduce_sum(torch.tensor([float(stop.requested), float(local_nonfinite)], dtype=torch.float64))
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def _guard(self, nonfinite: bool) -> None:
        c = self.counters
        if not nonfinite:
            c.nonfinite_in_a_row = 0
            return
        c.nonfinite_in_a_row += 1
        c.skipped_total += 1
        if c.nonfinite_in_a_row > self.cfg.train.max_nonfinite:
            raise NonFiniteError(
                f"{c.nonfinite_in_a_row} optimizer steps in a row had a non-finite loss or gradient (at step {c.step}, "
                f"{c.images} images); each was skipped. Lower optim.lr, raise optim.warmup_images, or use "
                f"train.precision=fp32; train.max_nonfinite={self.cfg.train.max_nonfinite} sets the tolerance.")

    def _flush_losses(self) -> None:
        """Reduce the per-step losses logged since the last flush, write them to loss.jsonl and add
        them to the per-stage window of the next stats line."""
        if not self.pending:
            return
        local = torch.tensor([p[3] for p in self.pending], dtype=torch.float64)
        mean = all_reduce_sum(local) / self.env.world_size
        records = [{"step": s, "stage": k, "images": n, "loss": float(v)}
                   for (s, k, n, _), v in zip(self.pending, mean.tolist())]
        self.logger.log_losses(records)
        self.pending = []
        for r in records:
            total = self.loss_window.setdefault(r["stage"], [0.0, 0])
            total[0] += r["loss"]
            total[1] += 1

    def _log_stats(self, window_start: tuple[float, int], lr: float, grad_norm) -> None:
        self._flush_losses()
        losses = {f"loss/stage{k}": total / count for k, (total, count) in sorted(self.loss_window.items())}
        self.loss_window = {}
        seconds = max(time.perf_counter() - window_start[0], 1e-9)
        c = self.counters
        self.logger.log_stats({"step": c.step, "images": c.images, "lr": lr, "grad_norm": grad_norm,
                               "img_per_s": (c.images - window_start[1]) / seconds,
                               "skipped_total": c.skipped_total, **losses})

    def save(self) -> str:
        self._flush_losses()
        c, rank = self.counters, self.env.rank
        tag = ckpt.make_tag(c.images)
        raw = self.engine.full_state_dict(keep=rank == 0)  # collective: every rank takes part

        def write_parts(root: str, tmp_tag: str) -> None:
            self.engine.save(root, tmp_tag)
            folder = os.path.join(root, tmp_tag)
            data = {str(k): s.state_dict() for k, s in self.streams.items()}
            ckpt.save_rank_state(folder, rank, {"rng": ckpt.capture_rng(), "data": data})
            if rank == 0:
                self.ema.save(folder)
                ckpt.save_raw_weights(folder, raw)  # `export --raw` reads this, never DeepSpeed's pickles
                save_run_config(folder, self.cfg)

        meta = {"counters": vars(c).copy(), "world_size": self.env.world_size, "wandb_id": self.wandb_id,
                "loss_window": {str(k): v for k, v in self.loss_window.items()},
                "config": self.cfg.to_dict(), "ema_decays": self.ema.decays,
                "trained_stages": self.cfg.trained_stages(), "provenance": self._provenance()}
        return ckpt.save_checkpoint(self.run_dir, tag, write_parts, meta, self.cfg.checkpoint.keep_last)

    def _provenance(self) -> dict:
        from dvdp_hr.data import manifest_digest

        try:
            digest = manifest_digest(self.cfg.data.shards)
        except (OSError, ValueError):
            digest = None
        return ckpt.provenance(digest)

    def sample_grid(self, final: bool = False) -> str | None:
        """Rank 0 draws a grid with the first EMA model (samples/<tag>.png, or samples/final.png).
        Non-essential: a failure is logged and the run goes on (raising here would leave the other
        ranks waiting in the next collective)."""
        if self.env.rank != 0 or self.cfg.logging.sample_count == 0:
            return None
        try:
            return self._final_grid() if final else self._draw_grid(ckpt.make_tag(self.counters.images))
        except Exception:  # noqa: BLE001 - any sampling failure must not end the training run
            log.exception("sample grid at step %d (%d images) failed; training continues",
                          self.counters.step, self.counters.images)
            return None

    def _final_grid(self) -> str:
        """samples/final.png: a copy of the grid already drawn at the final image count, else a new one."""
        folder = os.path.join(self.run_dir, "samples")
        drawn = os.path.join(folder, f"{ckpt.make_tag(self.counters.images)}.png")
        if os.path.isfile(drawn):
            return shutil.copyfile(drawn, os.path.join(folder, "final.png"))
        return self._draw_grid("final")

    def _draw_grid(self, name: str) -> str:
        cfg = self.cfg.logging
        path = draw_grid(self.ema.models[self.ema.decays[0]], self.schedule,
                         os.path.join(self.run_dir, "samples", f"{name}.png"), cfg.sample_count,
                         steps=cfg.sample_steps, device=self.engine.device)
        self.logger.log_image(self.counters.step, path)
        return path

    def _write_status(self, state: str) -> None:
        if self.env.rank == 0:
            ckpt.write_atomic(os.path.join(self.run_dir, "status.json"),
                              json.dumps({"state": state, **vars(self.counters)}))

    # ---- the loop ----
    def run(self) -> int:
        if self.finished_already:
            return 0
        stop = StopFlag().install()
        bar = tqdm(total=self.cfg.train.max_images, initial=self.counters.images, unit="img", dynamic_ncols=True,
                   disable=self.env.rank != 0 or not self.cfg.logging.progress)
        try:
            return self._loop(stop, bar)
        finally:
            bar.close()
            stop.uninstall()
            self.logger.close()

    def _loop(self, stop: StopFlag, bar) -> int:
        cfg, c = self.cfg, self.counters
        window, lr, grad_norm, saved_at = (time.perf_counter(), c.images), cfg.optim.lr, None, c.images
        start_step = c.step
        while c.images < cfg.train.max_images:
            # 1. one optimizer step on one stage's micro-batches
            k, loss, grad_norm, lr = self.train_step()
            images_before = c.images
            c.images += cfg.train.micro_batch[k] * cfg.train.grad_accum[k] * self.env.world_size
            c.step += 1
            self.pending.append((c.step, k, c.images, loss))
            bar.update(c.images - images_before)
            # 2. agree across ranks on signals and on the step's finiteness
            bad = not (math.isfinite(loss) and math.isfinite(grad_norm))
            stopping, nonfinite = self._agree(stop, bad)
            self._guard(nonfinite)
            # 3. periodic logging, checkpoints, then samples (a sampling crash must not cost the checkpoint)
            if c.step % cfg.logging.every_steps == 0:
                self._log_stats(window, lr, grad_norm)
                window = (time.perf_counter(), c.images)
            if _crossed(images_before, c.images, cfg.checkpoint.every_images) or stopping:
                tag = os.path.basename(self.save())
                saved_at = c.images
            if _crossed(images_before, c.images, cfg.logging.sample_every_images) and not stopping:
                self.sample_grid()
            if stopping:
                self._write_status("requeue")
                print0(f"stop signal received: checkpoint {tag} saved, exiting with {REQUEUE_EXIT_CODE} (requeue)")
                return REQUEUE_EXIT_CODE
        if c.step > start_step and c.step % cfg.logging.every_steps:  # the last partial window
            self._log_stats(window, lr, grad_norm)
        if saved_at != c.images:
            self.save()
        self.sample_grid(final=True)
        self._write_status("finished")
        return 0


def _crossed(before: int, after: int, every: int) -> bool:
    return every > 0 and before // every != after // every


def train(cfg: RunConfig, run_dir: str) -> int:
    """Train (or resume) the run in `run_dir`; returns the process exit code (0, or
    REQUEUE_EXIT_CODE after a stop signal)."""
    return Trainer(cfg, run_dir).run()
