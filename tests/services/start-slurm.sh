#!/usr/bin/env bash
# start-slurm.sh -- bring up a REAL single-node Slurm cluster on this machine:
# (bachglass: the project's copy of shared/slurm/start-slurm.sh; with-services.sh runs it for
#  tests/test_slurm.py, with SLURM_LOCAL_DIR under BACHGLASS_SERVICES_DIR.)
#   munged + slurmctld + slurmd  (+ optionally MariaDB + slurmdbd for sacct),
#   all as root, all state/logs/pids/keys under $SLURM_LOCAL_DIR
#   (default /tmp/slurm-local); no systemd needed, no cgroups unless asked.
#
# Usage:  bash start-slurm.sh                    # install (if needed) + start
#         SLURM_LOCAL_DBD=1 bash start-slurm.sh  # ... plus slurmdbd/MariaDB
#
# Env knobs:
#   SLURM_LOCAL_DIR      state dir (default /tmp/slurm-local)
#   SLURM_LOCAL_INSTALL  1 (default) = apt-get install missing Debian packages
#   SLURM_LOCAL_DBD      0 (default) = no accounting DB: 'sacct' fails
#                        ("Slurm accounting storage is disabled"), use
#                        snakemake's --slurm-status-command squeue.
#                        1 = private MariaDB (127.0.0.1:$SLURM_LOCAL_DB_PORT)
#                        + slurmdbd; creates account 'ci' with user root, so
#                        sacct/sacctmgr and slurm_account: ci work.
#   SLURM_LOCAL_DB_PORT  MariaDB TCP port on 127.0.0.1 (default 3307)
#   SLURM_LOCAL_ETC      1 (default) = symlink /etc/slurm/slurm.conf -> the
#                        generated conf. REQUIRED for snakemake: its
#                        slurm-jobstep plugin strips SLURM_CONF (all SLURM_*
#                        but a few) from the env of the nested 'srun' it runs
#                        inside each job, so srun must find the default path.
#                        0 = clients need SLURM_CONF (source $D/env.sh).
#   SLURM_LOCAL_CGROUP   0 (default) = proctrack/linuxproc + task/none: no
#                        cgroups, no memory/CPU enforcement; works anywhere.
#                        1 = proctrack/cgroup + task/cgroup (+ cgroup.conf with
#                        ConstrainCores/ConstrainRAMSpace): --mem is enforced,
#                        jobs over it end OUT_OF_MEMORY. Works on this VM
#                        (cgroup v1 hybrid); creates /sys/fs/cgroup/*/slurm_<host>.
#   SLURM_LOCAL_TIMEOUT  seconds to wait for the node to become idle (default 60)
#   SLURM_LOCAL_GPUS     0 (default). N > 0 (bachglass): the node offers N fake GPUs as a GRES
#                        (GresTypes=gpu; gres.conf File= N character devices like /dev/null), so jobs asking
#                        --gpus / --gres=gpu are scheduled and accounted (AllocTRES gres/gpu) on this
#                        GPU-less machine; what runs in them sees no CUDA device.
#
# Idempotent: daemons whose pid file points at a live process of the right
# name are left alone. stop-slurm.sh stops exactly those PIDs.
set -euo pipefail

D=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
INSTALL=${SLURM_LOCAL_INSTALL:-1}
DBD=${SLURM_LOCAL_DBD:-0}
DB_PORT=${SLURM_LOCAL_DB_PORT:-3307}
CGROUP=${SLURM_LOCAL_CGROUP:-0}
LINK_ETC=${SLURM_LOCAL_ETC:-1}
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}
GPUS=${SLURM_LOCAL_GPUS:-0}
CLUSTER=localci
ACCOUNT=ci

log() { printf '[start-slurm %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"

# ---------------------------------------------------------------- packages
need=()
for b in slurmctld slurmd munged sbatch; do command -v $b >/dev/null 2>&1 || need=(slurm-wlm munge); done
if [ "$DBD" = 1 ]; then
  command -v slurmdbd >/dev/null 2>&1 || need+=(slurmdbd)
  command -v mariadbd >/dev/null 2>&1 || need+=(mariadb-server-core mariadb-client-core)
fi
if [ ${#need[@]} -gt 0 ]; then
  [ "$INSTALL" = 1 ] || die "missing packages (${need[*]}) and SLURM_LOCAL_INSTALL=0"
  log "installing ${need[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  # postinst runs 'invoke-rc.d <svc> start'; this image's /usr/sbin/policy-rc.d
  # (exit 101) blocks that. Nothing here relies on those system daemons.
  # If there is no policy-rc.d, add one for the duration of the install so that
  # postinst does not start Debian's own munged/slurmd/slurmctld via init.d.
  tmp_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; tmp_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT  # (bachglass) also if the install is interrupted
  fi
  apt-get update -qq
  rc=0; apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || rc=$?
  if [ $tmp_policy = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  [ $rc = 0 ] || die "apt-get install ${need[*]} failed (rc=$rc)"
fi

# ---------------------------------------------------------------- helpers
alive() {  # alive PIDFILE COMM -> 0 if pid in file is running and named COMM
  local f=$1 want=$2 pid
  [ -s "$f" ] || return 1
  pid=$(cat "$f" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$want" ] || return 1
  # a dead daemon can linger as a zombie: PID 1 here (not systemd) reaps late
  case "$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null)" in
    Z|X|"") return 1 ;;
  esac
}
gone() { ! alive "$@"; }
wait_for() {  # wait_for SECONDS CMD... -> polls every 0.2 s
  local t=$1; shift
  local end=$(( $(date +%s) + t ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || return 1
    sleep 0.2
  done
}

# ---------------------------------------------------------------- layout
mkdir -p "$D"/{munge,state,spool,log,run}
chmod 0755 "$D" "$D/munge"  # munged: socket dir must be a+x, not group/world-writable

HOST=$(hostname -s)
getent hosts "$HOST" >/dev/null || log "WARNING: hostname '$HOST' does not resolve; add '127.0.0.1 $HOST' to /etc/hosts"

# slurmd -C: NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105
HW=$(slurmd -C | head -1)
getv() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$HW"; }
CPUS=$(getv CPUs); SOCK=$(getv SocketsPerBoard); CORES=$(getv CoresPerSocket)
TPC=$(getv ThreadsPerCore); MEM=$(getv RealMemory)
[ -n "$CPUS" ] && [ -n "$MEM" ] || die "could not parse 'slurmd -C': $HW"
# headroom (5%, >=256 MiB) so the node is never drained for "Low RealMemory"
MEM=$(( MEM - (MEM/20 > 256 ? MEM/20 : 256) ))

MS="$D/munge/munge.socket.2"
CONF="$D/slurm.conf"
if [ "$DBD" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
# for slurmdbd connections Slurm takes the munge socket from here, NOT AuthInfo
AccountingStoragePass=$MS
# record GPU allocations too (sacct AllocTRES gres/gpu=N)
AccountingStorageTRES=gres/gpu"
else
  ACCT="# no slurmdbd: sacct fails with 'Slurm accounting storage is disabled'
AccountingStorageType=accounting_storage/none"
fi
if [ "$CGROUP" = 1 ]; then
  TRACK="# cgroup v1/v2 autodetected; limits from cgroup.conf next to slurm.conf
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup,task/affinity
JobAcctGatherType=jobacct_gather/cgroup"
  printf 'CgroupPlugin=autodetect\nConstrainCores=yes\nConstrainRAMSpace=yes\n' >"$D/cgroup.conf"
else
  TRACK="# no cgroups: track processes via /proc, no task containment
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux"
  rm -f "$D/cgroup.conf"
fi
if [ "$GPUS" -gt 0 ]; then
  GRES="GresTypes=gpu"; NODE_GRES=" Gres=gpu:$GPUS"
  # slurmd drops GPUs without device files: give each a character device of its own (like /dev/null)
  for ((i = 0; i < GPUS; i++)); do [ -c "$D/fakegpu$i" ] || mknod -m 0666 "$D/fakegpu$i" c 1 3; done
  printf 'NodeName=%s Name=gpu File=%s/fakegpu[0-%s]\n' "$HOST" "$D" "$((GPUS - 1))" >"$D/gres.conf"
else
  GRES="# no GRES"; NODE_GRES=""
  rm -f "$D/gres.conf"
fi
cat >"$CONF.new" <<EOF
# generated by start-slurm.sh
ClusterName=$CLUSTER
# must be this machine's short hostname (slurmctld checks); () = address, no DNS
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
# private munged socket (no /run/munge needed)
AuthInfo=socket=$MS
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
$GRES
$TRACK
JobAcctGatherFrequency=5
$ACCT
# one line per finished job, readable without any DB
JobCompType=jobcomp/filetxt
JobCompLoc=$D/log/jobcomp.txt
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# jobs without --mem would otherwise get ALL node memory (one job at a time)
DefMemPerCPU=256
# keep finished jobs visible to squeue for 1 h (default 300 s); snakemake's
# squeue status mode needs >= 3 x init-seconds-before-status-checks
MinJobAge=3600
ReturnToService=2
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
MailProg=/bin/true
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} Sockets=${SOCK} CoresPerSocket=${CORES} ThreadsPerCore=${TPC} RealMemory=${MEM}${NODE_GRES} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
CONF_CHANGED=0
cmp -s "$CONF.new" "$CONF" || CONF_CHANGED=1
mv -f "$CONF.new" "$CONF"
export SLURM_CONF="$CONF"
printf 'export SLURM_CONF=%s\n' "$CONF" >"$D/env.sh"

if [ "$LINK_ETC" = 1 ]; then
  mkdir -p /etc/slurm
  if [ -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ]; then
    die "/etc/slurm/slurm.conf exists and is not a symlink; refusing to replace it"
  fi
  ln -sfn "$CONF" /etc/slurm/slurm.conf
fi

# ---------------------------------------------------------------- munge
if alive "$D/munge/munged.pid" munged; then
  log "munged already running (pid $(cat "$D/munge/munged.pid"))"
else
  if [ ! -s "$D/munge/munge.key" ]; then
    if command -v mungekey >/dev/null; then mungekey --create --keyfile="$D/munge/munge.key"
    else dd if=/dev/urandom of="$D/munge/munge.key" bs=1024 count=1 status=none; fi
  fi
  chown root:root "$D/munge/munge.key"; chmod 0600 "$D/munge/munge.key"
  rm -f "$MS" "$MS.lock"
  log "starting munged"
  munged --socket="$MS" --key-file="$D/munge/munge.key" \
         --pid-file="$D/munge/munged.pid" --log-file="$D/munge/munged.log" \
         --seed-file="$D/munge/munged.seed"
  wait_for 10 munge -n -S "$MS" || die "munged did not come up; see $D/munge/munged.log"
fi

# ---------------------------------------------------------------- MariaDB + slurmdbd
if [ "$DBD" = 1 ]; then
  M="$D/mysql"; MSOCK="$M/mysqld.sock"
  mkdir -p "$M"
  sql() { mariadb --no-defaults -S "$MSOCK" -uroot "$@"; }
  if alive "$M/mariadbd.pid" mariadbd; then
    log "mariadbd already running (pid $(cat "$M/mariadbd.pid"))"
  else
    if [ ! -d "$M/data/mysql" ]; then
      log "initialising MariaDB datadir"
      mariadb-install-db --no-defaults --user=root --datadir="$M/data" \
        --auth-root-authentication-method=socket --skip-test-db >"$D/log/mariadb-install.log" 2>&1 \
        || die "mariadb-install-db failed; see $D/log/mariadb-install.log"
    fi
    log "starting mariadbd on 127.0.0.1:$DB_PORT"
    setsid mariadbd --no-defaults --user=root --datadir="$M/data" --socket="$MSOCK" \
      --pid-file="$M/mariadbd.pid" --bind-address=127.0.0.1 --port="$DB_PORT" \
      --skip-name-resolve --log-error="$D/log/mariadb.log" \
      --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
      </dev/null >/dev/null 2>&1 &
    wait_for 30 sql -e 'select 1' || die "mariadbd did not come up; see $D/log/mariadb.log"
  fi
  sql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
          CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm-ci';
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  # slurmdbd reads slurmdbd.conf from the directory of $SLURM_CONF; must be 0600
  cat >"$D/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MS
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$D/run/slurmdbd.pid
LogFile=$D/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm-ci
StorageLoc=slurm_acct_db
EOF
  chmod 0600 "$D/slurmdbd.conf"
  if alive "$D/run/slurmdbd.pid" slurmdbd; then
    log "slurmdbd already running (pid $(cat "$D/run/slurmdbd.pid"))"
  else
    log "starting slurmdbd"
    slurmdbd
    wait_for 30 sacctmgr -n list cluster || die "slurmdbd did not answer; see $D/log/slurmdbd.log"
  fi
  # cluster/account/user must exist BEFORE slurmctld registers (idempotent)
  [ -n "$(sacctmgr -n -P list cluster "$CLUSTER" format=cluster)" ] || sacctmgr -i add cluster "$CLUSTER" >/dev/null
  [ -n "$(sacctmgr -n -P list account "$ACCOUNT" format=account)" ] || sacctmgr -i add account "$ACCOUNT" Description=ci Organization=ci >/dev/null
  [ -n "$(sacctmgr -n -P list user root format=user)" ] || sacctmgr -i add user root Account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null
  sacctmgr -n -P list assoc user=root account="$ACCOUNT" format=account | grep -qx "$ACCOUNT" \
    || sacctmgr -i add user root Account="$ACCOUNT" >/dev/null
fi

# ---------------------------------------------------------------- slurmctld
if alive "$D/run/slurmctld.pid" slurmctld; then
  if [ "$CONF_CHANGED" = 1 ]; then
    # accounting-type changes are not picked up by 'scontrol reconfigure'
    log "slurm.conf changed: restarting slurmctld (pid $(cat "$D/run/slurmctld.pid"))"
    pid=$(cat "$D/run/slurmctld.pid"); kill -TERM "$pid"
    wait_for 20 gone "$D/run/slurmctld.pid" slurmctld || kill -KILL "$pid"
  else
    log "slurmctld already running (pid $(cat "$D/run/slurmctld.pid"))"
  fi
fi
if ! alive "$D/run/slurmctld.pid" slurmctld; then
  log "starting slurmctld"
  # -i: ignore unreadable state files from an earlier run
  slurmctld -f "$CONF" -i
  wait_for 20 scontrol ping || die "slurmctld did not answer; see $D/log/slurmctld.log"
fi

# ---------------------------------------------------------------- slurmd
if alive "$D/run/slurmd.pid" slurmd; then
  if [ "$CONF_CHANGED" = 1 ]; then
    # plugin changes (proctrack/task) need a slurmd restart, not a reconfigure
    log "slurm.conf changed: restarting slurmd (pid $(cat "$D/run/slurmd.pid"))"
    pid=$(cat "$D/run/slurmd.pid"); kill -TERM "$pid"
    wait_for 20 gone "$D/run/slurmd.pid" slurmd || kill -KILL "$pid"
  else
    log "slurmd already running (pid $(cat "$D/run/slurmd.pid"))"
  fi
fi
if ! alive "$D/run/slurmd.pid" slurmd; then
  log "starting slurmd"
  slurmd -f "$CONF" -N "$HOST"
fi

# ---------------------------------------------------------------- wait idle
node_ready() {
  case "$(sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null)" in
    idle|mixed|allocated|completing) return 0 ;; *) return 1 ;;
  esac
}
if ! wait_for "$TIMEOUT" node_ready; then
  sinfo -N -l >&2 || true
  # a node left DOWN/DRAIN by an earlier run can be resumed
  scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true
  wait_for 10 node_ready || die "node $HOST not idle; see $D/log/slurmd.log"
fi
log "cluster up: $(sinfo -h -o '%P %a %D %T %N')  (accounting: $([ "$DBD" = 1 ] && echo slurmdbd || echo none))"
