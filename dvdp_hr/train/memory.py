"""Per-GPU memory of a run: OUR network's measured activations (memprobe) plus the ZeRO state model.

Activations are measured per stage for batch 1 and 2 (bytes = fixed + per_image * batch; the
network is linear in the batch, which the tests check at batch 3), with and without gradient
checkpointing, and cached on disk keyed by the model config, stage resolutions, precision, torch
version and the source of the model and measurement code: a plan takes seconds once measured
(the first measurement costs ~40 CPU-seconds for ffhq1024).

Training fit: state + peak(micro) <= usable (gpu_memory_gib less plan.memory_reserve_fraction). The
peak, not the saved bytes, decides: it adds the backward's gradient buffers and, with checkpointing,
one block's recomputed activations. Sampling fit: full weights in the run's dtype (a standalone
sampler, dvdp-hr sample) + the peak of one denoiser call without a graph; the sampler's few
image-sized tensors (x_t, x0 estimate) are 3-channel and negligible beside the UNet's feature maps.

State per rank (bytes per parameter; P = parameters, W = world size):
  weights    2 (bf16) or 4 (fp32) x P, / W under ZeRO-3
  gradients  2 or 4 x trained P, / W under ZeRO-2 and 3
  optimizer  12 x trained P / W under ZeRO >= 1 (fp32 master copy + Adam m and v; DeepSpeed keeps
             its own fp32 partition even in an fp32 run)
  EMA        4 x trained P per EMA length, / W when the EMA lives on each rank's partition (ema.py)
  buckets    gradient reduce buckets: distributed.reduce_bucket_size elements x grad bytes, twice
             with overlap_comm (approximate: DeepSpeed's own buffers)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import torch

import dvdp_hr
from dvdp_hr.train.confutil import ConfigError

GIB = 2**30
WEIGHT_BYTES = {"fp32": 4, "bf16": 2}
OPTIMIZER_BYTES = 12
EMA_BYTES = 4
RESERVE_USE = "allocator fragmentation, CUDA context, kernel workspaces"


@dataclasses.dataclass
class Linear:
    """bytes = fixed + per_image * batch."""
    fixed: float
    per_image: float

    @classmethod
    def from_batches(cls, one: int, two: int) -> "Linear":
        return cls(fixed=2 * one - two, per_image=two - one)

    def at(self, batch: int) -> float:
        return self.fixed + self.per_image * batch

    def largest_batch(self, budget: float) -> int:
        """Largest batch whose bytes fit `budget` (0 when not even one image fits)."""
        if self.per_image <= 0:
            raise ValueError("per-image bytes must be positive")
        return max(0, math.floor((budget - self.fixed) / self.per_image))


@dataclasses.dataclass
class StageActivations:
    resolution: int
    saved: dict  # checkpointing (bool) -> Linear: autograd-saved bytes at the end of the forward
    train: dict  # checkpointing (bool) -> Linear: peak live bytes over forward + loss + backward
    sample: Linear  # peak live bytes of one sampling step (no graph)


@dataclasses.dataclass
class Activations:
    total_params: int
    trained_params: int
    stages: list  # StageActivations, finest first


# ---- measurement and cache ----

def _source_digest() -> str:
    root = Path(dvdp_hr.__file__).parent
    files = sorted([*(root / "models").glob("*.py"), *(root / "diffusion").glob("*.py"),
                    root / "train" / "memprobe.py", Path(__file__)])
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def _cache_key(model_cfg, schedule, precision: str, trained: list[int]) -> str:
    model = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k not in ("grad_checkpointing", "compile")}
    what = {"model": model, "resolutions": [schedule.stage_resolution(k) for k in range(schedule.num_stages)],
            "precision": precision, "trained": trained, "torch": torch.__version__, "source": _source_digest()}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


def cache_dir() -> Path:
    base = os.environ.get("DVDP_HR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dvdp_hr")
    return Path(base) / "memory"


def _measure_stage(probes: dict, k: int) -> StageActivations:
    train, saved = {}, {}
    for ckpt in (False, True):
        one, two = probes[ckpt].train_step(k, 1), probes[ckpt].train_step(k, 2)
        saved[ckpt] = Linear.from_batches(one.saved, two.saved)
        train[ckpt] = Linear.from_batches(one.peak, two.peak)
    sample = Linear.from_batches(probes[False].sample_step(k, 1).peak, probes[False].sample_step(k, 2).peak)
    return StageActivations(probes[False].schedule.stage_resolution(k), saved, train, sample)


def measure_activations(model_cfg, schedule, precision: str, trained: list[int]) -> Activations:
    from dvdp_hr.train.memprobe import ProbeModel  # fake-tensor machinery only when measuring

    probes = {ckpt: ProbeModel(model_cfg, schedule, precision, ckpt) for ckpt in (False, True)}
    model = probes[False].model
    total = sum(p.numel() for p in model.parameters())
    if model_cfg.mode == "per_stage":
        trained_params = sum(p.numel() for k in trained for p in model.stage_modules(k).parameters())
    else:
        trained_params = total
    return Activations(total, trained_params, [_measure_stage(probes, k) for k in range(schedule.num_stages)])


def _to_json(acts: Activations) -> dict:
    def lines(d):  # JSON keys are strings: "True" / "False"
        return {str(c): dataclasses.asdict(v) for c, v in d.items()}

    stages = [{"resolution": s.resolution, "saved": lines(s.saved), "train": lines(s.train),
               "sample": dataclasses.asdict(s.sample)} for s in acts.stages]
    return {"total_params": acts.total_params, "trained_params": acts.trained_params, "stages": stages}


def _from_json(data: dict) -> Activations:
    def lines(d):
        return {c == "True": Linear(**v) for c, v in d.items()}

    stages = [StageActivations(s["resolution"], lines(s["saved"]), lines(s["train"]), Linear(**s["sample"]))
              for s in data["stages"]]
    return Activations(data["total_params"], data["trained_params"], stages)


def cached_activations(model_cfg, schedule, precision: str, trained: list[int]) -> Activations:
    """measure_activations, read from / written to cache_dir() (a failed write only costs time)."""
    path = cache_dir() / f"activations-{_cache_key(model_cfg, schedule, precision, trained)}.json"
    try:
        return _from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    acts = measure_activations(model_cfg, schedule, precision, trained)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(_to_json(acts)))
        os.replace(tmp, path)
    except OSError:
        pass
    return acts


# ---- state per rank ----

@dataclasses.dataclass
class StateBytes:
    weights: float
    grads: float
    optimizer: float
    ema: float
    buckets: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.ema + self.buckets


def state_bytes(total_params: int, trained_params: int, precision: str, zero_stage: int, world_size: int,
                ema_count: int, ema_partitioned: bool = True, bucket_elements: int = 0) -> StateBytes:
    """Model and optimizer state held by one rank (module docstring for the rules)."""
    w = WEIGHT_BYTES[precision]
    share = 1.0 / world_size
    return StateBytes(
        weights=total_params * w * (share if zero_stage >= 3 else 1.0),
        grads=trained_params * w * (share if zero_stage >= 2 else 1.0),
        optimizer=trained_params * OPTIMIZER_BYTES * (share if zero_stage >= 1 else 1.0),
        ema=ema_count * trained_params * EMA_BYTES * (share if ema_partitioned and zero_stage >= 1 else 1.0),
        buckets=bucket_elements * w)


# ---- the per-stage fit ----

@dataclasses.dataclass
class StageFit:
    stage: int
    resolution: int
    micro_batch: int
    checkpointing: bool
    saved_per_image: float  # bytes, with the stage's configured checkpointing
    train_per_image: float  # peak bytes per image, same
    train_total: float  # state + activations at the configured micro-batch
    max_micro: int  # largest micro-batch that fits, as configured
    max_micro_checkpointed: int  # ... with checkpointing on for this stage
    max_sample: int  # largest sampling batch (standalone sampler: weights + one step)
    measured_gib: float | None  # plan.memory_gib override (GPU-measured), when given
    trained: bool  # in train.stages (an untrained stage needs no fit)
    fits: bool  # the configured micro-batch fits (by the measured override when given)


@dataclasses.dataclass
class MemoryPlan:
    world_size: int
    precision: str
    zero_stage: int
    usable: float  # bytes of one GPU the plan may fill
    state: StateBytes
    acts: Activations
    stages: list  # StageFit


def usable_bytes(plan_cfg) -> float:
    reserve = plan_cfg.memory_reserve_fraction
    if not 0.0 <= reserve < 1.0:
        raise ConfigError(f"plan.memory_reserve_fraction must lie in [0, 1), got {reserve!r}.")
    return plan_cfg.gpu_memory_gib * GIB * (1.0 - reserve)


def _ema_count(cfg) -> int:
    return len(cfg.ema.halflife_images or cfg.ema.decays or [])


def _buckets(cfg) -> int:
    return cfg.distributed.reduce_bucket_size * (2 if cfg.distributed.overlap_comm else 1)


def _stage_fit(cfg, k: int, ckpt: bool, acts: StageActivations, state: StateBytes, usable: float,
               full_weights: float) -> StageFit:
    micro = cfg.train.micro_batch[k]
    budget = usable - state.total
    measured = {int(r): float(v) for r, v in cfg.plan.memory_gib.items()}.get(acts.resolution)
    max_micro = acts.train[ckpt].largest_batch(budget)
    fits = max_micro >= micro if measured is None else measured * GIB <= usable
    trained = k in cfg.trained_stages()
    return StageFit(k, acts.resolution, micro, ckpt, acts.saved[ckpt].per_image, acts.train[ckpt].per_image,
                    state.total + acts.train[ckpt].at(micro), max_micro, acts.train[True].largest_batch(budget),
                    acts.sample.largest_batch(usable - full_weights), measured, trained, fits or not trained)


def memory_plan(cfg, schedule, world_size: int, ema_partitioned: bool = True) -> MemoryPlan:
    try:
        flags = cfg.model.checkpointed_stages(schedule.num_stages)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    precision, zero = cfg.train.precision, cfg.train.zero_stage
    acts = cached_activations(cfg.model, schedule, precision, cfg.trained_stages())
    state = state_bytes(acts.total_params, acts.trained_params, precision, zero, world_size, _ema_count(cfg),
                        ema_partitioned, _buckets(cfg))
    usable = usable_bytes(cfg.plan)
    full_weights = acts.total_params * WEIGHT_BYTES[precision]
    fits = [_stage_fit(cfg, k, flags[k], acts.stages[k], state, usable, full_weights)
            for k in range(schedule.num_stages)]
    return MemoryPlan(world_size, precision, zero, usable, state, acts, fits)


__all__ = ["GIB", "Linear", "StageActivations", "Activations", "StateBytes", "StageFit", "MemoryPlan",
           "state_bytes", "measure_activations", "cached_activations", "memory_plan", "usable_bytes", "cache_dir"]
