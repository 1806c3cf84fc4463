#!/bin/bash
# slurm/train_ffhq1024.sh - the FFHQ-1024 training run on Slurm: 8 nodes x 8 GPUs, one training
# process per GPU started by srun (no torchrun), requeued until train.max_images is reached.
#
#   cd /path/to/dvdp_hr && sbatch slurm/train_ffhq1024.sh       # submit from the repository root
#   DVDP_ARGS="--shards /data/shards/ffhq1024" sbatch slurm/train_ffhq1024.sh
#
# Edit for your cluster: --partition/--account (uncomment), --time, and, to change the GPU count,
# --nodes (GPUs per node stay 8: --gpus-per-node = --ntasks-per-node). A different world size cannot
# resume an existing run directory (use a new DVDP_RUN_DIR). Command-line options override these
# lines: `sbatch --nodes=4 --time=12:00:00 slurm/train_ffhq1024.sh`.
#
# Environment (sbatch passes the submitting shell's environment; all optional):
#   DVDP_CONFIG     config YAML                              (default: configs/ffhq1024.yaml)
#   DVDP_RUN_DIR    run directory: checkpoints, status.json, stats.jsonl (default: runs/ffhq1024)
#   DVDP_ARGS       more `dvdp-hr train` arguments, split at whitespace: --shards DIR, --max-images N,
#                   key=value overrides (default: none)
#   DVDP_PYTHON     the Python to run                         (default: $DVDP_VENV/bin/python)
#   DVDP_VENV       a virtual environment with dvdp_hr        (default: .venv of the submit folder,
#                                                              else python3 on PATH)
#   DVDP_WORKDIR    folder the relative paths above start from (default: the submit folder)
#   DVDP_SRUN_ARGS  extra srun arguments, e.g. "--gpus-per-task=1" or "--resv-ports=1"
#   DVDP_MAX_RESTARTS  stop requeueing after this many restarts (default: 500)
#   DVDP_SRUN_WAIT  seconds the other ranks get to end once one rank ended (default: 300)
#
# Attempts and requeue: before the training step this script records RUN/status.json
# {"state": "running"} for this attempt (job id, SLURM_RESTART_COUNT). Slurm sends SIGUSR1 to every
# training process 300 s before the time limit (--signal without "B:": the srun tasks get it, not
# this shell); all ranks checkpoint at the same step, publish it, record "requeue" and exit 75. Only
# when the attempt recorded "requeue" does this script run `scontrol requeue`; the requeued job runs
# the same command, which resumes from RUN/checkpoints/latest. A crash, a refusal (exit 2: e.g. a
# changed world size) or a kill leaves "failed" and the job ends with that exit code. A SIGTERM to
# this shell (scancel, preemption) means Slurm is ending or requeueing the job itself: no requeue here.
#
# Logs: slurm-<jobname>-<jobid>.out in the submit folder (every attempt appends), plus
# RUN/stats.jsonl, RUN/loss.jsonl and RUN/status.json.
#
#SBATCH --job-name=dvdp-ffhq1024
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --mem=0
#SBATCH --time=2-00:00:00
#SBATCH --signal=USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
##SBATCH --partition=gpu
##SBATCH --account=my_account
##SBATCH --qos=normal
##SBATCH --constraint=h100

set -uo pipefail
log() { echo "[train_ffhq1024.sh $(date '+%F %T')] $*"; }
[ -n "${SLURM_JOB_ID:-}" ] || { echo "submit with sbatch: sbatch $0" >&2; exit 2; }

cd "${DVDP_WORKDIR:-${SLURM_SUBMIT_DIR:-.}}" || exit 2
CONFIG=${DVDP_CONFIG:-configs/ffhq1024.yaml}
RUN_DIR=${DVDP_RUN_DIR:-runs/ffhq1024}
if [ -n "${DVDP_PYTHON:-}" ]; then PY=$DVDP_PYTHON
elif [ -n "${DVDP_VENV:-}" ]; then PY=$DVDP_VENV/bin/python
elif [ -x .venv/bin/python ]; then PY=$PWD/.venv/bin/python
else PY=python3; fi
set -f                      # DVDP_ARGS / DVDP_SRUN_ARGS: split at whitespace, no globbing
EXTRA=(${DVDP_ARGS:-})
SRUN_EXTRA=(${DVDP_SRUN_ARGS:-})
set +f
RESTARTS=${SLURM_RESTART_COUNT:-0}
NTASKS=${SLURM_NTASKS:-1}

# rendezvous: rank 0 runs on the first node; the port comes from the job id (below the ephemeral
# range) or from srun --resv-ports (dvdp_hr.distributed.env)
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
export MASTER_ADDR
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
# since Slurm 22.05 srun does not inherit sbatch's --cpus-per-task
[ -n "${SLURM_CPUS_PER_TASK:-}" ] && export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK

status() { "$PY" -m dvdp_hr.distributed.status "$@"; }
mkdir -p "$RUN_DIR"
log "job $SLURM_JOB_ID attempt $((RESTARTS + 1)) on $SLURM_JOB_NODELIST: $NTASKS tasks, master $MASTER_ADDR, python $PY"
log "dvdp-hr train --config $CONFIG --run-dir $RUN_DIR ${EXTRA[*]}"
status write "$RUN_DIR" running --world-size "$NTASKS" || { log "cannot write $RUN_DIR/status.json"; exit 2; }

# Signals to THIS shell must not kill it before it can requeue: a warning signal (someone used
# --signal=B:USR1 or scancel -b) is passed on to the training processes; SIGTERM means Slurm is
# cancelling or preempting the job, which it then requeues (or not) itself.
TERMINATED=0
SRUN_PID=
forward() { log "batch shell got SIG$1: passing it to the training processes"; [ -n "$SRUN_PID" ] && kill -s "$1" "$SRUN_PID" 2>/dev/null; }
trap 'forward USR1' USR1
trap 'forward USR2' USR2
trap 'TERMINATED=1; log "batch shell got SIGTERM (scancel or preemption): Slurm decides about a requeue"' TERM

# --wait: once one rank ended, the others get this long to end too (a crashed rank's peers are stopped
# then instead of idling until the collective timeout); not --kill-on-bad-exit, which would kill
# rank 0 while it still closes its logs after the requeue exit (75) of another rank
srun --kill-on-bad-exit=0 --wait="${DVDP_SRUN_WAIT:-300}" "${SRUN_EXTRA[@]}" "$PY" -m dvdp_hr.cli train --config "$CONFIG" --run-dir "$RUN_DIR" "${EXTRA[@]}" &
SRUN_PID=$!
while true; do
  wait "$SRUN_PID"; RC=$?
  kill -0 "$SRUN_PID" 2>/dev/null || break   # wait returned because srun ended, not because of a trapped signal
done

STATE=$(status state "$RUN_DIR")
log "training step ended: exit code $RC, status '$STATE'"
case "$STATE" in
  requeue)
    if [ "$TERMINATED" = 1 ]; then log "not requeueing: the job is being ended by Slurm"; exit "$RC"; fi
    MAX=${DVDP_MAX_RESTARTS:-500}
    if [ "$RESTARTS" -ge "$MAX" ]; then
      log "not requeueing: $RESTARTS restarts reached DVDP_MAX_RESTARTS=$MAX; resubmit to continue"
      status write "$RUN_DIR" failed --exit-code "$RC" --reason "requeue refused after $RESTARTS restarts (DVDP_MAX_RESTARTS=$MAX)"
      exit 1
    fi
    log "checkpoint published and requeue requested: scontrol requeue $SLURM_JOB_ID"
    if scontrol requeue "$SLURM_JOB_ID"; then exit 0; fi
    log "scontrol requeue failed: resubmit the same command to resume"
    exit "$RC" ;;
  finished)
    exit "$RC" ;;
  failed)
    [ "$RC" = 0 ] && RC=1
    exit "$RC" ;;
  *)  # still "running" (or unreadable): a rank crashed or was killed before the trainer recorded an outcome
    [ "$RC" = 0 ] && RC=1
    status write "$RUN_DIR" failed --world-size "$NTASKS" --exit-code "$RC" --reason "srun exited $RC before the trainer recorded an outcome (a rank crashed or was killed); see the job log"
    exit "$RC" ;;
esac
