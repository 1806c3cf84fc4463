#!/bin/bash
# slurm/sample_fid50k.sh - FID-50k of a model on Slurm: every GPU draws its share of the seeds (one
# process per GPU started by srun, no torchrun), then every GPU computes the Inception features of
# its share of the images and rank 0 prints FID and KID (also written to OUTDIR/fid.json). The
# images and the score are the same for any GPU count. Rerunnable: finished seeds are skipped, so a
# requeued or resubmitted job continues where the last one stopped.
#
#   cd /path/to/dvdp_hr                                                  # submit from the repository root
#   DVDP_MODEL=ffhq1024.safetensors DVDP_REF=stats/ffhq1024.npz \
#     DVDP_INCEPTION=/shared/inception-2015-12-05.pt sbatch slurm/sample_fid50k.sh
#   DVDP_ARGS="--steps 100 --method ancestral" DVDP_MODEL=... sbatch --nodes=2 slurm/sample_fid50k.sh
#
# Edit for your cluster: --partition/--account (uncomment), --time, --nodes. Command-line options
# override these lines (`sbatch --nodes=4 --time=2:00:00 slurm/sample_fid50k.sh`).
#
# Environment (sbatch passes the submitting shell's environment):
#   DVDP_MODEL      export file (dvdp-hr export) or run directory (its latest EMA weights)   (required)
#   DVDP_OUTDIR     sample folder: seedNNNNNN.png, samples.json, fid.json (default: samples/fid50k)
#   DVDP_SEEDS      seeds to draw                                                  (default: 0-49999)
#   DVDP_REF        reference statistics .npz (dvdp-hr ref-stats, or clean-fid's FFHQ file; KID
#                   when NAME_kid.npz lies beside it). Unset: sample only, no score.
#   DVDP_INCEPTION  inception-2015-12-05.pt (README, Evaluation), needed with DVDP_REF
#   DVDP_ARGS       more `dvdp-hr sample` arguments, split at whitespace: --steps N, --method
#                   ddim|ancestral, --eta E, --batch B, --shards N, --checkpoint TAG (default: none)
#   DVDP_FID_ARGS   more `dvdp-hr fid` arguments: --no-kid, --batch, --workers  (default: none)
#   DVDP_PYTHON, DVDP_VENV, DVDP_WORKDIR, DVDP_SRUN_ARGS, DVDP_SRUN_WAIT: as in slurm/train_ffhq1024.sh
#   DVDP_MAX_RESTARTS  stop requeueing after this many restarts (default: 20)
#
# Time limit: Slurm sends SIGUSR1 to this shell 300 s before the limit (--signal=B:USR1@300); the
# shell then runs `scontrol requeue`, which ends the running step: the PNGs already written stay
# (each is written under a temporary name and renamed), and the requeued job draws only the
# batches with a missing image, bitwise as an uninterrupted run would. Any other failure ends the
# job with the step's exit code; submitting the same command again continues the folder.
# Changing the settings that decide the images (seeds, steps, method, eta, batch, precision, model)
# for an existing DVDP_OUTDIR is refused (exit 2): use a new folder.
#
# Logs: slurm-<jobname>-<jobid>.out in the submit folder (every attempt appends).
#
#SBATCH --job-name=dvdp-fid50k
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --mem=0
#SBATCH --time=4:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
##SBATCH --partition=gpu
##SBATCH --account=my_account
##SBATCH --qos=normal
##SBATCH --constraint=h100

set -uo pipefail
log() { echo "[sample_fid50k.sh $(date '+%F %T')] $*"; }
[ -n "${SLURM_JOB_ID:-}" ] || { echo "submit with sbatch: sbatch $0" >&2; exit 2; }
[ -n "${DVDP_MODEL:-}" ] || { echo "set DVDP_MODEL to an export file or run directory" >&2; exit 2; }

cd "${DVDP_WORKDIR:-${SLURM_SUBMIT_DIR:-.}}" || exit 2
OUTDIR=${DVDP_OUTDIR:-samples/fid50k}
SEEDS=${DVDP_SEEDS:-0-49999}
if [ -n "${DVDP_PYTHON:-}" ]; then PY=$DVDP_PYTHON
elif [ -n "${DVDP_VENV:-}" ]; then PY=$DVDP_VENV/bin/python
elif [ -x .venv/bin/python ]; then PY=$PWD/.venv/bin/python
else PY=python3; fi
set -f                      # the *_ARGS variables: split at whitespace, no globbing
EXTRA=(${DVDP_ARGS:-})
FID_EXTRA=(${DVDP_FID_ARGS:-})
SRUN_EXTRA=(${DVDP_SRUN_ARGS:-})
set +f
RESTARTS=${SLURM_RESTART_COUNT:-0}

# rendezvous: rank 0 on the first node; the port from the job id (dvdp_hr.distributed.env)
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
export MASTER_ADDR
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
[ -n "${SLURM_CPUS_PER_TASK:-}" ] && export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
[ -n "${DVDP_INCEPTION:-}" ] && export DVDP_INCEPTION

REQUEUE=0
SRUN_PID=
on_usr1() {
  log "time limit near (SIGUSR1)"
  REQUEUE=1
  [ -n "$SRUN_PID" ] && kill -s TERM "$SRUN_PID" 2>/dev/null
}
trap on_usr1 USR1
trap 'log "SIGTERM (scancel or preemption): Slurm decides about a requeue"' TERM

step() {  # srun one task per GPU; returns the step's exit code, waiting through trapped signals
  srun --kill-on-bad-exit=1 --wait="${DVDP_SRUN_WAIT:-300}" "${SRUN_EXTRA[@]}" "$PY" -m dvdp_hr.cli "$@" &
  SRUN_PID=$!
  local rc
  while true; do
    wait "$SRUN_PID"; rc=$?
    kill -0 "$SRUN_PID" 2>/dev/null || break
  done
  SRUN_PID=
  return "$rc"
}

requeue() {
  local max=${DVDP_MAX_RESTARTS:-20}
  if [ "$RESTARTS" -ge "$max" ]; then
    log "not requeueing: $RESTARTS restarts reached DVDP_MAX_RESTARTS=$max; submit again to continue"; exit 1
  fi
  log "requeueing: scontrol requeue $SLURM_JOB_ID (the next attempt skips the finished seeds)"
  scontrol requeue "$SLURM_JOB_ID" && exit 0
  log "scontrol requeue failed: submit the same command again to continue"; exit 1
}

log "job $SLURM_JOB_ID attempt $((RESTARTS + 1)) on $SLURM_JOB_NODELIST: ${SLURM_NTASKS:-1} tasks, python $PY"
log "dvdp-hr sample --model $DVDP_MODEL --outdir $OUTDIR --seeds $SEEDS ${EXTRA[*]}"
step sample --model "$DVDP_MODEL" --outdir "$OUTDIR" --seeds "$SEEDS" "${EXTRA[@]}"; RC=$?
[ "$REQUEUE" = 1 ] && requeue
if [ "$RC" != 0 ]; then log "sampling ended with exit code $RC"; exit "$RC"; fi

if [ -z "${DVDP_REF:-}" ]; then log "samples complete in $OUTDIR; DVDP_REF unset: no FID"; exit 0; fi
log "dvdp-hr fid --images $OUTDIR --ref $DVDP_REF ${FID_EXTRA[*]}"
step fid --images "$OUTDIR" --ref "$DVDP_REF" --json "$OUTDIR/fid.json" "${FID_EXTRA[@]}"; RC=$?
[ "$REQUEUE" = 1 ] && requeue
log "fid ended with exit code $RC$( [ "$RC" = 0 ] && echo ": $OUTDIR/fid.json")"
exit "$RC"
