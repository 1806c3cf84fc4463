"""The training loop, counted in images. Rerunning the same command resumes from RUN/checkpoints/latest.

Exactness: the stage of step n, the timesteps, the noise and the global RNG (dropout) are pure
functions of (seed, step, rank); data streams, weights, optimizer and EMA come from the checkpoint.
A run killed at any point and rerun therefore repeats the uninterrupted run bit for bit on CPU
(tested); on GPUs, kernels chosen by cudnn.benchmark and atomic reductions can differ between runs,
so a resumed GPU run matches to float rounding, not bit for bit.
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
from safetensors.torch import save_file

from dvdp_hr.diffusion import training_loss
from dvdp_hr.distributed import checkpoint as ckpt
from dvdp_hr.distributed.collect import leave_ranks
from dvdp_hr.distributed.env import all_reduce_sum, print0, setup_env
from dvdp_hr.distributed.signals import REQUEUE_EXIT_CODE, StopFlag
from dvdp_hr.metrics.logging import RunLogger
from dvdp_hr.metrics.progress import progress
from dvdp_hr.train.config import RunConfig, deepspeed_config
from dvdp_hr.train.ema import EMA
from dvdp_hr.train.lr import learning_rate
from dvdp_hr.train.plan import stage_for_step, stage_weights, step_seed
from dvdp_hr.train.checkpointing import CheckpointManager
from dvdp_hr.train.evaluation import evaluate, grid_images, record_best, save_grid
from dvdp_hr.train.setup import build_model, build_schedule, make_streams, optimizer_groups
from dvdp_hr.train.validate import check_shard_count, check_shards, check_world_size

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    pass


@dataclass
class Counters:
    step: int = 0
    images: int = 0
    nonfinite_in_a_row: int = 0
    skipped_total: int = 0
    ema_images: int = 0  # images since the last EMA update (half-lives count images; kept for exact resume)


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: str, reshard: bool = False):
        from dvdp_hr.distributed.engine import Engine, init_distributed

        self.cfg, self.run_dir = cfg, run_dir
        self.env = setup_env()
        init_distributed(cfg.distributed.timeout_minutes)
        # one conv algorithm search per input shape; shapes are fixed per stage, so it pays off at once
        torch.backends.cudnn.benchmark = cfg.distributed.cudnn_benchmark
        self.schedule = build_schedule(cfg)
        check_world_size(cfg, self.env.world_size)
        check_shards(cfg, self.schedule)
        check_shard_count(cfg, self.schedule, self.env.world_size, warn=self.env.rank == 0)
        os.makedirs(ckpt.checkpoints_dir(run_dir), exist_ok=True)
        model = build_model(cfg, self.schedule)
        self.ema = EMA(model, cfg.ema.decays, cfg.ema.halflife_images)  # before the engine partitions the weights
        groups, self.group_stages = optimizer_groups(model, cfg)
        self.engine = Engine(model, deepspeed_config(cfg), groups)
        self.ema.attach(self.engine)
        self._grid_drawn_at = -1  # image count of the last sample grid
        self.streams = make_streams(cfg, self.schedule, self.env.rank, self.env.world_size)
        rank, world = self.env.rank, self.env.world_size
        self.checkpoints = CheckpointManager(
            cfg, run_dir, self.env, self.engine, self.ema, self.streams, reshard=reshard,
            stream_factory=lambda reseed: make_streams(cfg, self.schedule, rank, world, reseed))
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
        self.pending: list[dict] = []  # loss.jsonl records not yet written

    # ---- resume ----
    def _resume_if_possible(self) -> None:
        """Resume from the newest verified checkpoint, if any (checkpointing.CheckpointManager.start)."""
        resumed = self.checkpoints.start()
        if resumed is not None:
            self.counters, self.finished_already = Counters(**resumed.counters), resumed.finished
            self.wandb_id, self.loss_window = resumed.wandb_id, resumed.loss_window

    # ---- one optimizer step ----
    def _micro_batch(self, k: int, t_generator: torch.Generator, noise_generator: torch.Generator):
        """x0 copied to the device without blocking (pinned by the loader on CUDA); timesteps drawn
        on the host (they index the schedule's tables there); noise and q_sample on the device."""
        x0 = next(self.iters[k]).to(self.engine.device, non_blocking=True)
        t = self.schedule.sample_timesteps(k, x0.shape[0], generator=t_generator)
        noise = torch.randn(x0.shape, generator=noise_generator, device=x0.device, dtype=x0.dtype)
        return x0, t, self.schedule.q_sample(x0, t, noise)

    def _generators(self, step: int) -> tuple[torch.Generator, torch.Generator]:
        """Per-step generators, pure functions of (seed, step, rank): a resumed run redraws the same."""
        seed, rank = self.cfg.train.seed, self.env.rank
        torch.manual_seed(step_seed(seed, step, rank, 1))  # dropout and friends
        t_generator = torch.Generator().manual_seed(step_seed(seed, step, rank, 2))
        noise_generator = torch.Generator(self.engine.device).manual_seed(step_seed(seed, step, rank, 3))
        return t_generator, noise_generator

    def train_step(self) -> tuple[int, torch.Tensor, torch.Tensor, float]:
        """One optimizer step; returns (stage, mean loss, grad norm, learning rate used) with the loss
        and grad norm as device tensors: nothing here waits for the device."""
        cfg, step = self.cfg, self.counters.step
        k = stage_for_step(cfg.train.seed, step, self.weights)
        t_generator, noise_generator = self._generators(step)
        accum, dtype = cfg.train.grad_accum[k], self.engine.dtype
        total = torch.zeros((), device=self.engine.device)
        for micro in range(accum):
            x0, t, y_t = self._micro_batch(k, t_generator, noise_generator)
            output = self.engine(y_t.to(dtype), t)  # CPU t: the model moves it without a sync
            # the loss needs no noise: x0 parameterisation, or y_t given for eps / v
            loss = training_loss(self.schedule, output, x0, None, t, cfg.model.prediction, cfg.train.snr_gamma,
                                 y_t=y_t, weighting=cfg.train.loss_weighting, sigma_data=cfg.train.sigma_data).mean()
            self.engine.backward(loss / accum, boundary=micro == accum - 1)
            total += loss.detach() / accum
        lr = learning_rate(self.counters.images, cfg.optim, cfg.train.max_images)
        grad_norm = self.engine.step([lr if k in stages else 0.0 for stages in self.group_stages])
        self.counters.ema_images += self.images_per_step(k)
        if (step + 1) % cfg.ema.every_steps == 0:
            self.ema.update(self.counters.ema_images)
            self.counters.ema_images = 0
        return k, total, grad_norm, lr

    def images_per_step(self, k: int) -> int:
        return self.cfg.train.micro_batch[k] * self.cfg.train.grad_accum[k] * self.env.world_size

    # ---- bookkeeping between steps ----
    def _agree(self, stop: StopFlag, loss: torch.Tensor,
               grad_norm: torch.Tensor) -> tuple[bool, bool, float, float, bool]:
        """The step's one host sync: a single all-reduce of [stop requested, loss not finite, grad
        norm, loss, checkpoint due] -> (stop, nonfinite, grad norm, mean loss over ranks, due),
        agreed by every rank. Rank 0's clock alone decides checkpoint.every_minutes."""
        device = loss.device
        flags = torch.stack([torch.full((), float(stop.requested), device=device),
                             (~torch.isfinite(loss)).float(),
                             grad_norm.to(device, torch.float32), loss.float(),
                             torch.full((), float(self.env.rank == 0 and self.checkpoints.due()), device=device)]).double()
        stopping, nonfinite, norm, loss_sum, due = all_reduce_sum(flags).tolist()
        world = self.env.world_size
        return stopping > 0, nonfinite > 0 or not math.isfinite(norm), norm / world, loss_sum / world, due > 0

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

    def _record(self, k: int, loss: float, grad_norm: float) -> None:
        """Queue the step's (already rank-averaged) loss for loss.jsonl; add it to the stats window."""
        c = self.counters
        self.pending.append({"step": c.step, "stage": k, "images": c.images, "loss": loss})
        window = self.loss_window.setdefault(k, [0.0, 0, 0.0, 0])  # loss sum, steps, grad-norm sum, finite norms
        window[0] += loss
        window[1] += 1
        if math.isfinite(grad_norm):
            window[2] += grad_norm
            window[3] += 1

    def _flush_losses(self) -> None:
        """Append the queued per-step losses to loss.jsonl (rank 0; no communication)."""
        if self.pending:
            self.logger.log_losses(self.pending)
            self.pending = []

    def _log_stats(self, window_start: tuple[float, int], lr: float, grad_norm) -> None:
        self._flush_losses()
        losses = {}
        for k, (total, steps, norms, finite) in sorted(self.loss_window.items()):
            losses[f"loss/stage{k}"] = total / steps
            losses[f"grad_norm/stage{k}"] = norms / finite if finite else float("nan")
        self.loss_window = {}
        seconds = max(time.perf_counter() - window_start[0], 1e-9)
        c = self.counters
        self.logger.log_stats({"step": c.step, "images": c.images, "lr": lr, "grad_norm": grad_norm,
                               "img_per_s": (c.images - window_start[1]) / seconds,
                               "skipped_total": c.skipped_total, **losses})

    def save(self, final: bool = False) -> str:
        """Collective. `final`: the run ends after it (stop signal; the last save is detected here)."""
        self._flush_losses()
        final = final or self.counters.images >= self.cfg.train.max_images
        return self.checkpoints.save(vars(self.counters), self.wandb_id, self.loss_window, final)

    def sample_grid(self, final: bool = False) -> str | None:
        """A grid of the first EMA model (samples/<tag>.png, or samples/final.png), sampled by every
        rank (bf16 autocast on CUDA) and saved by rank 0. Collective."""
        if self.cfg.logging.sample_count == 0:
            return None
        images = self.counters.images
        if final and self._grid_drawn_at == images:  # drawn at this image count already: copy it
            return self._copy_final_grid() if self.env.rank == 0 else None
        cfg = self.cfg.logging
        pixels = grid_images(self.ema.materialize(), self.schedule, cfg.sample_count, cfg.sample_steps,
                             self.engine.device, self.env.rank, self.env.world_size)
        self._grid_drawn_at = images
        if self.env.rank != 0:
            return None
        path = os.path.join(self.run_dir, "samples", f"{'final' if final else ckpt.make_tag(images)}.png")
        try:  # rank 0 alone from here: a failure to write costs the grid, never the run
            save_grid(pixels, path)
        except Exception:  # noqa: BLE001 - any saving failure must not end the training run
            log.exception("sample grid at step %d (%d images) failed; training continues", self.counters.step, images)
            return None
        self.logger.log_image(self.counters.step, path)
        return path

    def _copy_final_grid(self) -> str:
        folder = os.path.join(self.run_dir, "samples")
        drawn = os.path.join(folder, f"{ckpt.make_tag(self.counters.images)}.png")
        return shutil.copyfile(drawn, os.path.join(folder, "final.png"))

    def evaluate(self, tag: str) -> dict:
        """Scores of the first EMA model (every rank takes part), logged to stats.jsonl and wandb;
        RUN/best.json names the best checkpoint so far. `tag`: the checkpoint of this step."""
        metrics = evaluate(self.ema.materialize(), self.schedule, self.cfg.evaluation, self.cfg.data.shards,
                           self.engine.device, self.env.rank, self.env.world_size)
        c = self.counters
        self.logger.log_stats({"step": c.step, "images": c.images, **{f"eval/{k}": v for k, v in metrics.items()}})
        if self.env.rank == 0:
            best = record_best(self.run_dir, metrics, c.images, tag)
            summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            print0(f"evaluation at {c.images:,} images ({tag}): {summary}" + (" (best so far)" if best else ""))
        return metrics

    def _write_status(self, state: str) -> None:
        """Collective: waits until the last checkpoint is published, then rank 0 writes status.json."""
        self.checkpoints.write_status(state, vars(self.counters))

    # ---- the loop ----
    def run(self) -> int:
        if self.finished_already:
            self._write_status("finished")  # status.json is per attempt: this one found nothing left to train
            return 0
        stop = StopFlag().install()
        bar = progress(self.cfg.train.max_images, self.counters.images,
                       enabled=self.env.rank == 0 and self.cfg.logging.progress,
                       every_seconds=self.cfg.logging.progress_every_seconds)
        try:
            return self._loop(stop, bar)
        finally:
            self.checkpoints.close()  # joins the checkpoint writer, releases the run lock
            bar.close()
            stop.uninstall()
            self.logger.close()

    def _loop(self, stop: StopFlag, bar) -> int:
        cfg, c = self.cfg, self.counters
        window, lr, grad_norm, saved_at = (time.perf_counter(), c.images), cfg.optim.lr, None, c.images
        start_step = c.step
        while c.images < cfg.train.max_images:
            # 1. one optimizer step on one stage's micro-batches (queued on the device, no waiting)
            k, loss, norm, lr = self.train_step()
            images_before = c.images
            c.images += self.images_per_step(k)
            c.step += 1
            # 2. the step's one host sync: agree across ranks on signals and finiteness, read the loss
            stopping, nonfinite, grad_norm, loss, due = self._agree(stop, loss, norm)
            self._guard(nonfinite)
            if not nonfinite:  # a skipped step changed nothing; its NaN would poison the window's mean
                self._record(k, loss, grad_norm)
            bar.update(c.images - images_before)
            # 3. periodic logging, checkpoints, then samples (a sampling crash must not cost the checkpoint)
            if c.step % cfg.logging.every_steps == 0:
                self._log_stats(window, lr, grad_norm)
                window = (time.perf_counter(), c.images)
            evaluating = _crossed(images_before, c.images, cfg.evaluation.every_images) and not stopping
            if _crossed(images_before, c.images, cfg.checkpoint.every_images) or stopping or due or evaluating:
                tag = os.path.basename(self.save(final=stopping))
                saved_at = c.images
            if evaluating:  # after the checkpoint it scores, so best.json can name it
                self.evaluate(tag)
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


def train(cfg: RunConfig, run_dir: str, reshard: bool = False) -> int:
    """Train (or resume) the run in `run_dir`; returns the process exit code (0, or
    REQUEUE_EXIT_CODE after a stop signal). `reshard`: resume (not exactly) a checkpoint written
    on another world size instead of refusing it."""
    code = Trainer(cfg, run_dir, reshard).run()
    # Every rank returns here at the same step (the end is agreed in the step's all-reduce): close the
    # group together, as sampling and the metrics do, so no rank exits while another still uses gloo.
    leave_ranks()
    return code
