#!/usr/bin/env bash
# slurm/local/stop.sh [--purge] [--quiet] - stop the Slurm started by slurm/local/start.sh.
# Cancels every job, then stops slurmd(s), slurmctld, slurmdbd, mariadbd and munged through their pid
# files in $SLURM_LOCAL_DIR/run (never by process name). --purge also deletes $SLURM_LOCAL_DIR, the
# /etc/slurm/slurm.conf symlink when it points there, and the lines start.sh added to /etc/hosts.
set -euo pipefail
DIR=${SLURM_LOCAL_DIR:-/tmp/dvdp-slurm}
CONF=$DIR/etc/slurm.conf
PURGE=0; QUIET=0
for arg in "$@"; do
  case "$arg" in
    --purge) PURGE=1;; --quiet) QUIET=1;;
    *) echo "usage: $0 [--purge] [--quiet]" >&2; exit 2;;
  esac
done
say() { [ "$QUIET" = 1 ] || echo "[slurm/local/stop] $*"; }
[ "$(id -u)" = 0 ] || { echo "[slurm/local/stop] must run as root" >&2; exit 1; }

kill_pidfile() {  # kill_pidfile FILE EXPECTED_COMM
  local f=$1 comm=$2 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q "$comm" "/proc/$pid/comm" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then say "$comm ($pid) still alive: SIGKILL"; kill -9 "$pid" 2>/dev/null || true; fi
    say "stopped $comm (pid $pid)"
  fi
  rm -f "$f"
}

if [ -d "$DIR/run" ]; then
  if [ -f "$DIR/run/slurmctld.pid" ] && [ -f "$CONF" ]; then
    jobs=$(SLURM_CONF=$CONF timeout 10 squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      say "cancelling jobs: $(echo $jobs)"
      SLURM_CONF=$CONF scancel $jobs 2>/dev/null || true
      for _ in $(seq 50); do [ -z "$(SLURM_CONF=$CONF timeout 5 squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
    fi
  fi
  for f in "$DIR"/run/slurmd-*.pid; do kill_pidfile "$f" slurmd; done
  kill_pidfile "$DIR/run/slurmctld.pid" slurmctld
  kill_pidfile "$DIR/run/slurmdbd.pid" slurmdbd
  kill_pidfile "$DIR/run/mariadbd.pid" mariadbd
  kill_pidfile "$DIR/run/munged.pid" munged
fi

if [ "$PURGE" = 1 ]; then
  if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$CONF" ]; then rm -f /etc/slurm/slurm.conf; fi
  if grep -q '# dvdp-slurm-local$' /etc/hosts 2>/dev/null; then
    grep -v '# dvdp-slurm-local$' /etc/hosts > "/tmp/.hosts.dvdp-slurm.$$" && cat "/tmp/.hosts.dvdp-slurm.$$" > /etc/hosts
    rm -f "/tmp/.hosts.dvdp-slurm.$$"
  fi
  rm -rf "$DIR"
  say "purged $DIR"
fi
