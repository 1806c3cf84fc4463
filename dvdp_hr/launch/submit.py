"""`dvdp-hr submit {train,sample,fid} ...`: run a dvdp-hr command as a submitit job.

The executor is submitit's AutoExecutor (Slurm when `srun` exists, local processes otherwise),
sized from the config's `launch:` section (plus `--launch key=value`). Every task runs the same
`dvdp-hr <command> ...` in-process (`CliJob`), so a submitted run behaves exactly like one started by
hand or by slurm/train_ffhq1024.sh: ranks from the Slurm job step (dvdp_hr.distributed.env),
RUN/status.json per attempt, resume from RUN/checkpoints/latest.

Time-out and preemption: Slurm sends SIGUSR2 `launch.signal_delay_s` before the limit (submitit's
`--signal`). The trainer's StopFlag records it and defers submitit's own handler; every rank
finishes the step, the checkpoint is written collectively and published, status.json says
"requeue", the trainer returns 75; only then `CliJob` forwards the signal to submitit's handler,
which calls `CliJob.checkpoint()` (the same call again: it resumes from the checkpoint just
published), dumps it, runs `scontrol requeue` on rank 0 and exits.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from submitit.helpers import Checkpointable

from dvdp_hr.distributed import signals
from dvdp_hr.distributed.status import attempt_id, read_status
from dvdp_hr.train.confutil import ConfigError, apply_override, from_dict, to_dict

COMMANDS = ("train", "sample", "fid")


class CliJob(Checkpointable):
    """`dvdp-hr <command> <argv>` as a submitit callable, requeued through `checkpoint()`."""

    def __init__(self, command: str, argv: list[str], run_dir: str | None = None):
        self.command, self.argv, self.run_dir = command, list(argv), run_dir

    def __call__(self) -> dict:
        _ranks_from_local_executor()
        from dvdp_hr.cli import main

        code = main([self.command, *self.argv])
        if code == signals.REQUEUE_EXIT_CODE:
            # the checkpoint is published: now submitit's handler (checkpoint -> requeue -> exit on rank 0)
            signals.forward_deferred()
        else:
            signals.discard_deferred()
        status = read_status(self.run_dir) if self.run_dir else None
        if code not in (0, signals.REQUEUE_EXIT_CODE):
            reason = f" ({status.get('reason')})" if status and status.get("reason") else ""
            raise RuntimeError(f"dvdp-hr {self.command} exited with {code}{reason}")
        return {"exit_code": code, "status": status}

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on its timeout/preemption signal (after the trainer's checkpoint when
        the trainer was running): requeue the same call unless this attempt already ended."""
        status = read_status(self.run_dir) if self.run_dir else None
        if status and status.get("attempt") == attempt_id() and status.get("state") in ("failed", "finished"):
            return None  # submitit then ends the job instead of requeueing it
        return super().checkpoint(*args, **kwargs)

    def __repr__(self) -> str:
        return f"CliJob(dvdp-hr {self.command} {shlex.join(self.argv)})"


def _ranks_from_local_executor() -> None:
    """submitit's local executor starts one process per task with SUBMITIT_LOCAL_* variables only."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "local" or "RANK" in os.environ:
        return
    import submitit

    from dvdp_hr.distributed.env import job_port

    job = submitit.JobEnvironment()
    os.environ.update({"RANK": str(job.global_rank), "WORLD_SIZE": str(job.num_tasks),
                       "LOCAL_RANK": str(job.local_rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(job_port(int(job.job_id)))})


# ---- building the submission ----
def _subcommands(parser: argparse.ArgumentParser) -> dict:
    for action in parser._actions:  # noqa: SLF001 - argparse keeps subparsers here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return action.choices
    return {}


def launch_config(cmd_args, launch_overrides: list[str]):
    """The LaunchConfig of the command's --config (RunConfig.launch) with `--launch k=v` on top."""
    from dvdp_hr.train.launch_config import LaunchConfig

    base = LaunchConfig()
    if getattr(cmd_args, "config", None) is not None or getattr(cmd_args, "run_dir", None):
        from dvdp_hr.cli import _load

        try:
            cfg = _load(cmd_args, getattr(cmd_args, "run_dir", None))
        except ConfigError:
            if getattr(cmd_args, "config", None) is not None:
                raise
            cfg = None  # no --config and no RUN/config.yaml: launch defaults
        if cfg is not None:
            base = cfg.launch
    tree = to_dict(base)
    for override in launch_overrides:
        apply_override(tree, LaunchConfig, override)
    launch = from_dict(LaunchConfig, tree, "launch.")
    launch.validate()
    return launch


def make_executor(launch, folder: str, cluster: str, name: str):
    import submitit

    cluster = None if cluster == "auto" else cluster
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster,
                                     slurm_max_num_timeout=launch.max_requeues_on_timeout)
    if executor.cluster != "slurm" and launch.nodes > 1:
        raise ConfigError(f"launch.nodes={launch.nodes} needs Slurm; the {executor.cluster} executor runs "
                          "on this machine only.")
    params = {
        "name": name, "timeout_min": launch.time_minutes, "nodes": launch.nodes,
        "tasks_per_node": launch.resolved_tasks_per_node(), "cpus_per_task": launch.cpus_per_task,
        "gpus_per_node": launch.gpus_per_node or None, "mem_gb": launch.mem_gb,
    }
    if executor.cluster == "slurm":
        params.update({
            "slurm_partition": launch.partition, "slurm_account": launch.account, "slurm_qos": launch.qos,
            "slurm_constraint": launch.constraint, "slurm_signal_delay_s": launch.signal_delay_s,
            "slurm_setup": list(launch.setup) or None,
            # a crashed rank ends the step at once instead of idling the others until the NCCL timeout
            "slurm_srun_args": ["--kill-on-bad-exit=1"],
            "slurm_additional_parameters": {"requeue": True, **launch.additional},
        })
    # (the local executor sends its SIGUSR2 30 s before time_minutes; submitit offers no setting for it)
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def submit(command: str, argv: list[str], *, cluster: str = "auto", folder: str | None = None,
           launch_overrides: list[str] = (), wait: bool = False, out=sys.stdout):
    """Validate `dvdp-hr <command> <argv>` here, submit it, print the job id and log paths."""
    from dvdp_hr.cli import build_parser

    available = _subcommands(build_parser())
    if command not in COMMANDS:
        raise ConfigError(f"`dvdp-hr {command}` cannot be submitted (submit runs: {', '.join(COMMANDS)}).")
    if command not in available:
        raise ConfigError(f"`dvdp-hr {command}` does not exist in this version of dvdp_hr, so it cannot be submitted "
                          f"(commands here: {', '.join(c for c in COMMANDS if c in available)}).")
    cmd_args = available[command].parse_args(argv)  # argument errors now, not in the job
    run_dir = getattr(cmd_args, "run_dir", None)
    if isinstance(run_dir, list):  # commands taking several run dirs
        run_dir = run_dir[0] if len(run_dir) == 1 else None
    if command == "train" and not run_dir:
        raise ConfigError("--run-dir is required to submit training (checkpoints, status.json and logs go there).")
    if getattr(cmd_args, "dry_run", False):
        raise ConfigError("--dry-run is not submitted; run `dvdp-hr train --dry-run ...` directly.")
    launch = launch_config(cmd_args, list(launch_overrides))
    if run_dir:
        run_dir = os.path.abspath(run_dir)
    folder = os.path.abspath(folder or (os.path.join(run_dir, "submitit") if run_dir else "submitit"))
    os.makedirs(folder, exist_ok=True)
    name = launch.job_name or f"dvdp-{command}" + (f"-{os.path.basename(run_dir)}" if run_dir else "")
    executor = make_executor(launch, folder, cluster, name)
    job = executor.submit(CliJob(command, _absolute_paths(argv), run_dir))
    tasks = launch.nodes * launch.resolved_tasks_per_node()
    print(f"submitted job {job.job_id} ({executor.cluster}, {launch.nodes} node(s) x "
          f"{launch.resolved_tasks_per_node()} task(s)): dvdp-hr {command} {shlex.join(argv)}", file=out)
    print(f"  log (rank 0): {job.paths.stdout}\n          {job.paths.stderr}", file=out)
    if tasks > 1:
        print(f"  other ranks:  {folder}/{job.job_id}_<rank>_log.out/.err", file=out)
    if executor.cluster == "slurm":
        print(f"  watch:        squeue -j {job.job_id}; sacct -j {job.job_id}" +
              (f"; cat {run_dir}/status.json; tail {run_dir}/stats.jsonl" if run_dir else ""), file=out)
    out.flush()
    if wait:
        result = job.result()
        print(f"job {job.job_id} done: {result}", file=out)
    return job


def _absolute_paths(argv: list[str]) -> list[str]:
    """Path-valued options made absolute: a requeued job must not depend on its working directory."""
    path_flags = {"--config", "--run-dir", "--shards", "--model", "--out", "--outdir", "--images", "--ref",
                  "--ref-images", "--inception", "--json", "--data"}
    fixed, expect_path = [], False
    for arg in argv:
        if expect_path and not arg.startswith("-") and "://" not in arg and "{" not in arg:
            arg = os.path.abspath(arg)
        elif "=" in arg and arg.split("=", 1)[0] in path_flags:
            flag, value = arg.split("=", 1)
            arg = f"{flag}={os.path.abspath(value)}" if "://" not in value and "{" not in value else arg
        expect_path = arg in path_flags
        fixed.append(arg)
    return fixed


def cmd_submit(args) -> int:
    """`dvdp-hr submit` (wired in dvdp_hr.cli)."""
    rest = list(args.args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    submit(args.what, rest, cluster=args.cluster, folder=args.folder, launch_overrides=args.launch, wait=args.wait)
    return 0
