#!/usr/bin/env bash
# slurm/local/start.sh - a REAL single-host Slurm (slurmctld + slurmd + slurmdbd/MariaDB accounting)
# for the tests and CI. Needs root (the daemons run as root) and, on a fresh Debian/Ubuntu, apt.
#
#   sudo slurm/local/start.sh                 # 2 emulated nodes (node1, node2) on this host
#   source "$(sudo slurm/local/start.sh --print-env)"   # or: source /tmp/dvdp-slurm/env.sh
#   sbatch / srun / squeue / sacct / submitit now talk to it;  slurm/local/stop.sh [--purge] stops it
#
# What it does (idempotent: an instance already running in the same folder is stopped first, so the
# queue starts empty and job ids restart at 1):
#   1. installs slurmctld slurmd slurm-client munge slurmdbd mariadb-server if missing (one apt-get update)
#   2. writes slurm.conf, slurmdbd.conf and a munge key under $SLURM_LOCAL_DIR (state, spool, logs there too)
#   3. starts munged, mariadbd + slurmdbd (real accounting: submitit reads job states with `sacct`),
#      slurmctld and one slurmd per emulated node
#   4. waits until every node is idle (exit 1 with the daemons' logs otherwise), prints where env.sh is
#
# Settings (environment):
#   SLURM_LOCAL_DIR=/tmp/dvdp-slurm     config, state, spool, logs, pid files, env.sh
#   SLURM_LOCAL_NODES=2                 emulated nodes; >1 uses Slurm's multiple-slurmd mode (node1..nodeN)
#   SLURM_LOCAL_CPUS=                   CPUs per node (default: this host's topology from `slurmd -C`)
#   SLURM_LOCAL_MEM_MB=                 RealMemory per node (default: host memory / nodes)
#   SLURM_LOCAL_PORT_BASE=6817          slurmctld port; slurmdbd +2, mariadb +3, slurmd +11.. (+1 for one node)
#   SLURM_LOCAL_CRED_EXPIRE=10          seconds before a requeued job may start again (Slurm's default: 120)
#   SLURM_LOCAL_LINK_ETC=1              symlink /etc/slurm/slurm.conf to ours (plain `sbatch` works without SLURM_CONF)
#   SLURM_LOCAL_EDIT_HOSTS=1            add "127.0.0.1 nodeN" to /etc/hosts for node names that do not resolve
#   SLURM_LOCAL_TIMEOUT=60              seconds to wait for the nodes to become idle
# Essential on machines without cgroups (containers, CI): ProctrackType=proctrack/linuxproc and
# TaskPlugin=task/none (the defaults drain the node). Tested with Debian 12's Slurm 22.05.
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/dvdp-slurm}
NODES=${SLURM_LOCAL_NODES:-2}
CPUS_OVERRIDE=${SLURM_LOCAL_CPUS:-}
MEM_OVERRIDE=${SLURM_LOCAL_MEM_MB:-}
PORT_BASE=${SLURM_LOCAL_PORT_BASE:-6817}
LINK_ETC=${SLURM_LOCAL_LINK_ETC:-1}
EDIT_HOSTS=${SLURM_LOCAL_EDIT_HOSTS:-1}
CRED_EXPIRE=${SLURM_LOCAL_CRED_EXPIRE:-10}
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}
CLUSTER=${SLURM_LOCAL_CLUSTER:-dvdplocal}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [ "${1:-}" = "--print-env" ]; then echo "$DIR/env.sh"; exit 0; fi

CTLD_PORT=$PORT_BASE
DBD_PORT=$((PORT_BASE + 2))
DB_PORT=$((PORT_BASE + 3))
CONF=$DIR/etc/slurm.conf
T_START=$(date +%s.%N)

log() { echo "[slurm/local/start $(date +%T)] $*"; }
die() { echo "[slurm/local/start] ERROR: $*" >&2; exit 1; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

[ "$(id -u)" = 0 ] || die "must run as root (the Slurm daemons run as root); try: sudo $0"
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "SLURM_LOCAL_NODES must be a positive integer"

# ---------------------------------------------------------------- 0. stop a previous instance in $DIR
SLURM_LOCAL_DIR=$DIR "$HERE/stop.sh" --quiet

# ---------------------------------------------------------------- 1. packages (one apt-get update)
T0=$(date +%s.%N)
need=()
command -v slurmctld >/dev/null 2>&1 || need+=(slurmctld)
command -v slurmd    >/dev/null 2>&1 || need+=(slurmd)
command -v sbatch    >/dev/null 2>&1 || need+=(slurm-client)
command -v munged    >/dev/null 2>&1 || need+=(munge)
command -v slurmdbd  >/dev/null 2>&1 || need+=(slurmdbd)
command -v mariadbd  >/dev/null 2>&1 || need+=(mariadb-server)
if [ ${#need[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get: install Slurm (slurmctld, slurmd, slurmdbd, munge) and MariaDB yourself"
  log "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # with systemd the packages start their own units, which would read /etc/slurm/slurm.conf (ours, below)
  if [ -d /run/systemd/system ]; then
    for u in slurmctld slurmd slurmdbd mariadb munge; do systemctl disable --now "$u" >/dev/null 2>&1 || true; done
  fi
  log "packages installed in $(elapsed "$T0")s"
fi
SLURM_VERSION=$(slurmctld -V | awk '{print $2}')

# ---------------------------------------------------------------- 2. folders, hardware, node names
T1=$(date +%s.%N)
rm -rf "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run" "$DIR/munge" "$DIR/db" "$DIR/etc"
mkdir -p "$DIR"/{etc,state,spool,log,run}
chmod 755 "$DIR" "$DIR"/{etc,spool,log,run}

HW=$(slurmd -C | head -n1)
hw() { printf '%s\n' $HW | sed -n "s/^$1=//p"; }
MEM_NODE=${MEM_OVERRIDE:-$(( $(hw RealMemory) / NODES ))}
if [ -n "$CPUS_OVERRIDE" ]; then
  NODE_HW="CPUs=$CPUS_OVERRIDE"
else
  NODE_HW="CPUs=$(hw CPUs) Boards=$(hw Boards) SocketsPerBoard=$(hw SocketsPerBoard) CoresPerSocket=$(hw CoresPerSocket) ThreadsPerCore=$(hw ThreadsPerCore)"
fi
if [ "$NODES" = 1 ]; then
  NODE_NAMES=("$(hostname -s)")
  NODE_LINE="NodeName=${NODE_NAMES[0]} NodeAddr=127.0.0.1 Port=$((PORT_BASE + 1)) $NODE_HW RealMemory=$MEM_NODE State=UNKNOWN"
else
  NODE_NAMES=(); for i in $(seq 1 "$NODES"); do NODE_NAMES+=("node$i"); done
  NODE_LINE="NodeName=node[1-$NODES] NodeHostname=localhost NodeAddr=127.0.0.1 Port=[$((PORT_BASE + 11))-$((PORT_BASE + 10 + NODES))] $NODE_HW RealMemory=$MEM_NODE State=UNKNOWN"
fi
for n in "${NODE_NAMES[@]}"; do
  mkdir -p "$DIR/spool/$n"
  # node names end up in SLURM_JOB_NODELIST and MASTER_ADDR, so they must resolve
  if ! getent hosts "$n" >/dev/null; then
    if [ "$EDIT_HOSTS" = 1 ] && [ -w /etc/hosts ]; then
      echo "127.0.0.1 $n # dvdp-slurm-local" >> /etc/hosts
    else
      die "node name $n does not resolve; add '127.0.0.1 $n' to /etc/hosts or set SLURM_LOCAL_EDIT_HOSTS=1"
    fi
  fi
done

# ---------------------------------------------------------------- 3. munge (private daemon, own key and socket)
mkdir -p "$DIR"/munge/{etc,run,log,lib}
chmod 755 "$DIR/munge" "$DIR/munge/run"   # the socket folder must be reachable by every user
chmod 700 "$DIR/munge/etc" "$DIR/munge/log" "$DIR/munge/lib"
dd if=/dev/urandom of="$DIR/munge/etc/munge.key" bs=1024 count=1 status=none
chmod 400 "$DIR/munge/etc/munge.key"
MUNGE_SOCK=$DIR/munge/run/munge.socket
munged --key-file="$DIR/munge/etc/munge.key" --socket="$MUNGE_SOCK" --pid-file="$DIR/run/munged.pid" \
       --log-file="$DIR/munge/log/munged.log" --seed-file="$DIR/munge/lib/munged.seed"
for _ in $(seq 50); do munge -n -S "$MUNGE_SOCK" 2>/dev/null | unmunge -S "$MUNGE_SOCK" >/dev/null 2>&1 && break; sleep 0.1; done
munge -n -S "$MUNGE_SOCK" | unmunge -S "$MUNGE_SOCK" >/dev/null || die "munged is not working (see $DIR/munge/log/munged.log)"

# ---------------------------------------------------------------- 4. accounting: private MariaDB + slurmdbd
mkdir -p "$DIR/db"
mariadb-install-db --user=root --datadir="$DIR/db" --auth-root-authentication-method=socket --skip-test-db \
  > "$DIR/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $DIR/log/mariadb-install.log)"
setsid nohup mariadbd --user=root --datadir="$DIR/db" --socket="$DIR/run/mysqld.sock" --pid-file="$DIR/run/mariadbd.pid" \
  --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve --innodb-buffer-pool-size=64M \
  --log-error="$DIR/log/mariadb.err" </dev/null >/dev/null 2>&1 &
for _ in $(seq 150); do mariadb -S "$DIR/run/mysqld.sock" -e 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
mariadb -S "$DIR/run/mysqld.sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm-local';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;" || die "MariaDB did not come up (see $DIR/log/mariadb.err)"
cat > "$DIR/etc/slurmdbd.conf" <<CONF
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm-local
StorageLoc=slurm_acct_db
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
DebugLevel=info
CONF
chmod 600 "$DIR/etc/slurmdbd.conf"

# ---------------------------------------------------------------- 5. slurm.conf
cat > "$CONF" <<CONF
# written by slurm/local/start.sh ($(date -Is)): Slurm $SLURM_VERSION on one host, for tests and CI
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK,cred_expire=$CRED_EXPIRE
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups: plain process tracking, no task binding (the cgroup defaults drain the node here)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
# real accounting (sacct): submitit reads job states from it
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCK
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
MpiDefault=none
# srun --resv-ports hands each step ports from this range (SLURM_STEP_RESV_PORTS)
MpiParams=ports=12000-12999
MailProg=/bin/true
ReturnToService=2
# fast turnaround for tests
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1
KillWait=5
MinJobAge=3600
# real preemption: a job in partition "high" requeues jobs of partition "debug" (which get their --signal first)
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
$NODE_LINE
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=20
PartitionName=high Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
CONF
chmod 644 "$CONF"
export SLURM_CONF=$CONF
echo "export SLURM_CONF=$CONF" > "$DIR/env.sh"

if [ "$LINK_ETC" = 1 ]; then
  mkdir -p /etc/slurm
  if [ ! -e /etc/slurm/slurm.conf ] || [ -L /etc/slurm/slurm.conf ]; then
    ln -sfn "$CONF" /etc/slurm/slurm.conf
  else
    log "WARNING: /etc/slurm/slurm.conf is a real file; left alone (use SLURM_CONF=$CONF)"
  fi
fi
log "configuration written in $(elapsed "$T1")s: $CONF"

# ---------------------------------------------------------------- 6. daemons
T2=$(date +%s.%N)
slurmdbd   # reads slurmdbd.conf next to $SLURM_CONF; must be up before slurmctld's first start
deadline=$((SECONDS + 30))
until timeout 5 sacctmgr -n list cluster >/dev/null 2>&1 || [ $SECONDS -ge $deadline ]; do sleep 0.2; done
sacctmgr -n list cluster >/dev/null 2>&1 || { tail -20 "$DIR/log/slurmdbd.log" >&2; die "slurmdbd did not come up"; }
slurmctld -f "$CONF"            # daemonizes; pid in $DIR/run/slurmctld.pid
for n in "${NODE_NAMES[@]}"; do
  slurmd -f "$CONF" -N "$n"     # daemonizes; pid in $DIR/run/slurmd-$n.pid
done

ok=0; deadline=$((SECONDS + TIMEOUT))
while [ $SECONDS -lt $deadline ]; do
  states=$(timeout 5 sinfo -h -N -o '%N %T' 2>/dev/null | awk '{print $2}' | sort -u | tr '\n' ' ')
  [ "$states" = "idle " ] && { ok=1; break; }
  sleep 0.2
done
if [ "$ok" != 1 ]; then
  sinfo -N -l >&2 || true
  for f in "$DIR"/log/*.log; do echo "== $f" >&2; grep -v -i pmix "$f" | tail -15 >&2; done
  die "nodes did not become idle within ${TIMEOUT}s"
fi
# the cluster must be known to accounting, or sacct answers nothing
timeout 10 sacctmgr -n list cluster format=cluster | grep -qw "$CLUSTER" || die "cluster $CLUSTER not registered in slurmdbd"
log "daemons up: ${#NODE_NAMES[@]} node(s) idle in $(elapsed "$T2")s (total $(elapsed "$T_START")s)"
sinfo
log "Slurm $SLURM_VERSION ready. Use:  source $DIR/env.sh   (stop: $HERE/stop.sh)"
