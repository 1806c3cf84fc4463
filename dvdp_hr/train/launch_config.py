"""The `launch:` section of a run config: where and how `dvdp-hr submit` runs a command on Slurm
(through submitit). The trainer ignores it; the sbatch script (slurm/train_ffhq1024.sh) carries its
own #SBATCH lines."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from dvdp_hr.train.confutil import ConfigError


@dataclass
class LaunchConfig:
    partition: Optional[str] = None  # None: the cluster's default partition
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None  # e.g. "h100"
    nodes: int = 1
    gpus_per_node: int = 8  # 0 on a CPU-only cluster
    tasks_per_node: Optional[int] = None  # None: one training process per GPU (1 without GPUs)
    cpus_per_task: int = 8
    mem_gb: Optional[float] = None  # None: the partition's default
    time_minutes: int = 2880  # the job's time limit; a longer run is requeued and resumes
    signal_delay_s: int = 300  # SIGUSR2 this long before the limit: time for the collective checkpoint
    # submitit's max_num_timeout: a time-out is how most attempts of a long run end
    max_requeues_on_timeout: int = 1000
    job_name: Optional[str] = None  # None: dvdp-<command>-<run dir name>
    setup: list = field(default_factory=list)  # shell lines run before srun (module load ..., export ...)
    additional: dict = field(default_factory=dict)  # extra #SBATCH options, e.g. {"exclusive": true}

    def resolved_tasks_per_node(self) -> int:
        return self.tasks_per_node if self.tasks_per_node is not None else max(self.gpus_per_node, 1)

    def validate(self) -> None:
        for key in ("nodes", "cpus_per_task", "time_minutes"):
            if getattr(self, key) < 1:
                raise ConfigError(f"launch.{key} must be at least 1, got {getattr(self, key)}.")
        if self.gpus_per_node < 0 or (self.tasks_per_node is not None and self.tasks_per_node < 1):
            raise ConfigError("launch.gpus_per_node must be >= 0 and launch.tasks_per_node >= 1 "
                              "(or null: one per GPU).")
        if self.signal_delay_s < 10 or self.signal_delay_s >= self.time_minutes * 60:
            raise ConfigError(f"launch.signal_delay_s={self.signal_delay_s} must be at least 10 and below the time "
                              f"limit (launch.time_minutes={self.time_minutes}); it is the time the checkpoint has "
                              "before the kill.")
        if self.gpus_per_node and self.resolved_tasks_per_node() != self.gpus_per_node:
            raise ConfigError(f"launch.tasks_per_node={self.tasks_per_node} but launch.gpus_per_node="
                              f"{self.gpus_per_node}: the trainer runs one process per GPU (set tasks_per_node "
                              "to null or equal).")
