"""Typed run config: YAML preset + dotted overrides -> validated dataclasses -> DeepSpeed JSON.

Per-stage lists (micro_batch, grad_accum, stage_weights) are indexed by stage k, 0 = finest.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Union

import yaml

from dvdp_hr.models import ModelConfig
from dvdp_hr.train.confutil import ConfigError, apply_override, from_dict, load_yaml, to_dict
from dvdp_hr.train.launch_config import LaunchConfig

log = logging.getLogger(__name__)


@dataclass
class BandStats:
    """Per-coordinate detail-band variances behind automatic turning points (dvdp-math.md s8)."""
    source: str = ""  # where the variances come from (a label, printed in the dry-run plan)
    sigma_perp2: list = field(default_factory=list)  # one per boundary k -> k+1, orthonormal units
    snr_threshold: float = 0.05  # a stage ends where its removed band's SNR drops below this (s8)


@dataclass
class ScheduleConfig:
    resolution: int = 64  # finest (output) image size in pixels
    root_resolution: int = 16  # coarsest stage's size: resolution / 2**K for K stage boundaries
    num_steps: int = 1000  # diffusion timesteps T, shared by all stages
    turning_points: Union[list, str] = field(default_factory=lambda: [300, 600])  # or "auto"
    # linear | cosine | cosine_shifted | cosine_interpolated (dvdp-math.md s9)
    beta_schedule: str = "linear"
    ramp: str = "cosine"  # how gamma falls from 1 to 0 between turning points: cosine | linear (s3)
    band_stats: Optional[BandStats] = None
    # the shifted cosines move log-SNR by 2 log(resolution / shift_base); None = root_resolution
    shift_base: Optional[int] = None
    sampling_grid: str = "uniform"  # default step-grid policy of the samplers: uniform | logsnr (s10)


@dataclass
class DataConfig:
    shards: Optional[str] = None  # make_shards output dir, or URL pattern with a {res} field
    num_workers: Union[int, list] = 0  # loader workers per rank: one number, or one per stage (finest first)
    shuffle_buffer: int = 1000  # samples each reading slot shuffles over; 1 = no shuffling
    flip: bool = True  # random horizontal flips


@dataclass
class OptimConfig:
    name: str = "adamw"  # "adamw" (torch AdamW) or "fused_adam" (DeepSpeed's fused kernels)
    lr: float = 1e-4
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_images: int = 0  # linear warmup length in training images; 0 = none
    decay: str = "constant"  # constant | cosine | linear, over the images after warmup
    min_lr_ratio: float = 0.0  # cosine/linear decay ends at lr * min_lr_ratio
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    seed: int = 0
    max_images: int = 10_000  # training length in images (all stages); the lr schedule spans it
    stages: Optional[list] = None  # subset of stages to train; None = all
    stage_weights: Optional[list] = None  # None = proportional to each stage's timesteps
    micro_batch: list = field(default_factory=lambda: [8, 8, 8])  # per GPU, one per stage (finest first)
    grad_accum: list = field(default_factory=lambda: [1, 1, 1])  # micro-batches per optimizer step, per stage
    global_batch: Optional[list] = None  # optional check: micro * accum * world_size
    zero_stage: int = 2  # DeepSpeed ZeRO stage: 1 | 2 | 3
    precision: str = "fp32"  # fp32 | bf16
    snr_gamma: float = 5.0  # min_snr weightings: the clamp gamma in min(SNR, gamma)
    # min_snr | min_snr_orthonormal | eps_mse | edm (dvdp-math.md s11). The default keeps the loss of
    # runs started before it existed; configs that predate it also keep the old "v" (v_orthonormal).
    loss_weighting: str = "min_snr_orthonormal"
    sigma_data: float = 0.5  # edm weighting: the data std in pixel units
    # how often each stage is trained when stage_weights is None (dvdp-math.md s12):
    # timestep_share | uniform | logsnr_span | compute
    stage_weighting: str = "timestep_share"
    max_nonfinite: int = 5  # consecutive skipped steps before stopping


@dataclass
class EMAConfig:
    decays: list = field(default_factory=lambda: [0.999])  # per-step decays, one EMA model each
    # Alternative to decays: EMA half-lives in training images (EDM2-style length). Images per step
    # vary between stages, so the per-step decay is 0.5 ** (images_this_step / halflife).
    halflife_images: Optional[list] = None
    every_steps: int = 1  # update the EMA models every N optimizer steps


@dataclass
class CheckpointConfig:
    every_images: int = 5000  # checkpoint cadence in training images
    every_minutes: float = 0.0  # wall-clock cadence besides images and signals; 0 = off
    keep_last: int = 3  # most recent checkpoints kept on disk
    keep_every_images: int = 0  # also keep the first checkpoint past every multiple (roll-back points); 0 = off
    background: bool = True  # rank 0's files (EMA, raw weights, meta) written by a thread while training goes on
    raw_weights: str = "final"  # when raw.safetensors is written: "final" (final and stop checkpoints) | "every"
    lock_stale_minutes: float = 10.0  # a run lock whose heartbeat is older than this is taken over


@dataclass
class DistributedConfig:
    """Process-group and DeepSpeed communication settings (every key: docs/config-reference.md)."""
    timeout_minutes: float = 30.0  # a dead rank fails the collective after this long instead of idling all GPUs
    overlap_comm: bool = True  # ZeRO-2/3: reduce gradient buckets while backward continues
    reduce_bucket_size: int = 50_000_000  # elements per gradient reduction bucket
    allgather_bucket_size: int = 50_000_000  # elements per parameter all-gather bucket (ZeRO-1/2)
    communication_data_type: Optional[str] = None  # None (DeepSpeed default) | "fp32" | "bf16"
    zero3_prefetch_bucket_size: int = 0  # ZeRO-3 prefetch; 0 = off (the module order changes with the stage)
    cudnn_benchmark: bool = True  # pick conv algorithms per shape (static shapes per stage)


@dataclass
class LoggingConfig:
    every_steps: int = 10  # log metrics every N optimizer steps
    wandb_mode: str = "offline"  # offline | online | disabled
    wandb_project: str = "dvdp_hr"
    sample_every_images: int = 0  # 0 = no periodic sample grids
    sample_count: int = 16  # images per sample grid (periodic and final); 0 = no grids
    sample_steps: int = 50  # sampling steps for the grids
    progress: bool = True  # rank 0 progress: a bar on a terminal, log lines otherwise
    progress_every_seconds: float = 60.0  # log-line progress cadence when stdout is not a terminal (SLURM logs)


@dataclass
class EvalConfig:
    """Evaluation during training (dvdp_hr/train/evaluation.py): every rank samples its share."""
    every_images: int = 0  # 0 = off; each evaluation follows a checkpoint at the same step
    count: int = 256  # samples (seeds 0..count-1) and data images (the first `count` of the shard set)
    steps: int = 50  # sampling steps per evaluation sample
    batch: int = 0  # sampling micro-batch; 0 = the engine's default for the resolution
    inception: Optional[str] = None  # Inception weights (inception-2015-12-05.pt): FID beside SWD
    ref_stats: Optional[str] = None  # reference statistics (dvdp-hr ref-stats) for FID


@dataclass
class PlanConfig:
    """Figures for the dry-run cost plan; `throughput_source` labels where the throughputs come from.
    Memory is OUR network's, measured by dvdp_hr.train.memory; `memory_gib` only overrides its fit check."""
    gpu_memory_gib: float = 80.0  # memory of one GPU for the plan's fit check
    memory_reserve_fraction: float = 0.1  # of gpu_memory_gib kept free (fragmentation, CUDA context, workspaces)
    throughput_img_s: dict = field(default_factory=dict)  # resolution -> train img/s per GPU
    # resolution -> peak GiB of OUR network measured on a GPU at the configured micro-batch
    # (bench/gpu_check_train.sh); when given it decides the plan's fit check for that stage
    memory_gib: dict = field(default_factory=dict)
    throughput_source: str = ""
    shards_per_set: int = 0  # shards per resolution set assumed by the plan when data.shards is not a local folder


@dataclass
class RunConfig:
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)  # dvdp-hr submit (submitit); the trainer ignores it

    @property
    def num_stages(self) -> int:
        return len(self.train.micro_batch)

    def trained_stages(self) -> list[int]:
        return sorted(self.train.stages) if self.train.stages is not None else list(range(self.num_stages))

    def to_dict(self) -> dict:
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def upgrade_legacy_tree(tree: dict) -> dict:
    """A config written before issue 11 (no train.loss_weighting) meant by model.prediction=v what
    is now "v_orthonormal" (dvdp-math.md s11): keep that meaning. New configs state loss_weighting."""
    model, train = tree.get("model"), tree.get("train")
    if isinstance(model, dict) and model.get("prediction") == "v" and "loss_weighting" not in (train or {}):
        log.warning("model.prediction=v in a config without train.loss_weighting: read as 'v_orthonormal' "
                    "(v's definition before issue 11). Set train.loss_weighting to use the unit-scale v.")
        tree = dict(tree, model=dict(model, prediction="v_orthonormal"))
    return tree


def load_config(path: Optional[str] = None, overrides: list[str] = (), data: Optional[dict] = None) -> RunConfig:
    """Preset file (or dict) + `key=value` overrides -> validated RunConfig."""
    tree = dict(data) if data is not None else (load_yaml(path) if path else {})
    for override in overrides:
        apply_override(tree, RunConfig, override)
    tree = upgrade_legacy_tree(tree)
    cfg = from_dict(RunConfig, tree)
    from dvdp_hr.train.validate import validate_config  # late import: validate builds the schedule

    validate_config(cfg)
    return cfg


def deepspeed_config(cfg: RunConfig) -> dict:
    """The DeepSpeed JSON for this run. Accumulation is driven by the loop per stage, so the
    engine sees gradient_accumulation_steps = 1 and the loop marks the boundary itself."""
    o, t = cfg.optim, cfg.train
    ds = {
        "train_micro_batch_size_per_gpu": int(t.micro_batch[cfg.trained_stages()[0]]),
        "gradient_accumulation_steps": 1,
        "gradient_clipping": float(o.grad_clip),
        "zero_optimization": {"stage": int(t.zero_stage)},
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": o.lr, "betas": list(o.betas), "eps": o.eps, "weight_decay": o.weight_decay,
                       "torch_adam": o.name == "adamw", "adam_w_mode": True},
        },
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # DeepSpeed's throughput timer synchronizes the device at every forward and step
        "timers": {"throughput": {"enabled": False}},
    }
    if t.precision == "bf16":
        ds["bf16"] = {"enabled": True, "check_grad_overflow": True}
    ds["zero_optimization"].update(_zero_comm(cfg))
    if cfg.distributed.communication_data_type is not None:
        ds["communication_data_type"] = cfg.distributed.communication_data_type
    return ds


def _zero_comm(cfg: RunConfig) -> dict:
    """ZeRO communication settings from the `distributed` section."""
    d = cfg.distributed
    comm = {"overlap_comm": bool(d.overlap_comm), "contiguous_gradients": True,
            "reduce_bucket_size": int(d.reduce_bucket_size)}
    if cfg.train.zero_stage in (1, 2):
        comm["allgather_bucket_size"] = int(d.allgather_bucket_size)
    else:
        # Which stage network runs changes from step to step, so ZeRO-3's traced module order is
        # invalidated often; prefetch (0 = off) would then fetch the wrong network's parameters.
        # Marking the stage networks as z3 leaf modules broke their backward (deepspeed 0.19.8).
        comm["stage3_prefetch_bucket_size"] = int(d.zero3_prefetch_bucket_size)
    return comm


__all__ = ["RunConfig", "ConfigError", "load_config", "deepspeed_config", "ScheduleConfig", "TrainConfig"]
