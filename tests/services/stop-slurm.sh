#!/usr/bin/env bash
# stop-slurm.sh -- stop the daemons started by start-slurm.sh, by PID only.
# (bachglass: the project's copy of shared/slurm/stop-slurm.sh; with-services.sh runs it for
#  tests/test_slurm.py, with SLURM_LOCAL_DIR under BACHGLASS_SERVICES_DIR.)
#   1. scancel every job of the local cluster (so no slurmstepd is left behind)
#   2. SIGTERM slurmd, slurmctld, slurmdbd, mariadbd, munged -- each only if the PID recorded in
#      its pid file is alive AND /proc/PID/comm is the expected program name
#      (guards against a recycled PID); SIGKILL after a grace period.
# Usage: bash stop-slurm.sh [--purge]   (--purge also deletes $SLURM_LOCAL_DIR)
# Idempotent: running it twice, or with nothing running, is fine.
set -uo pipefail

D=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
PURGE=0; [ "${1:-}" = --purge ] && PURGE=1

log() { printf '[stop-slurm %s] %s\n' "$(date +%T)" "$*" >&2; }

if [ ! -d "$D" ]; then log "nothing to do ($D absent)"; exit 0; fi
export SLURM_CONF="$D/slurm.conf"

pid_of() {  # pid_of PIDFILE EXPECTED_COMM -> prints pid if alive and matching
  local f=$1 want=$2 pid comm
  [ -s "$f" ] || return 1
  pid=$(cat "$f" 2>/dev/null); [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [ "$comm" = "$want" ] || { log "pid $pid in $f is '$comm', not '$want' -- leaving it alone"; return 1; }
  echo "$pid"
}

running() {  # running PID -> 0 if alive and not a zombie (PID 1 may reap late)
  local st
  kill -0 "$1" 2>/dev/null || return 1
  st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null)
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

stop_one() {  # stop_one PIDFILE COMM
  local f=$1 want=$2 pid i
  pid=$(pid_of "$f" "$want") || { log "$want: not running"; rm -f "$f"; return 0; }
  log "$want: SIGTERM $pid"
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 1 100); do running "$pid" || break; sleep 0.1; done
  if running "$pid"; then log "$want: SIGKILL $pid"; kill -KILL "$pid" 2>/dev/null; fi
  rm -f "$f"
}

# 1. cancel jobs while the controller is still up
if pid_of "$D/run/slurmctld.pid" slurmctld >/dev/null 2>&1 && [ -f "$SLURM_CONF" ]; then
  if [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
    log "cancelling remaining jobs: $(squeue -h -o %i | tr '\n' ' ')"
    scancel --full $(squeue -h -o %i) 2>/dev/null || true
    for i in $(seq 1 75); do
      [ -z "$(squeue -h -t running,completing -o %i 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
fi

# 2. daemons, compute side first
stop_one "$D/run/slurmd.pid"    slurmd
stop_one "$D/run/slurmctld.pid" slurmctld
stop_one "$D/run/slurmdbd.pid"  slurmdbd     # only with SLURM_LOCAL_DBD=1
stop_one "$D/mysql/mariadbd.pid" mariadbd    # only with SLURM_LOCAL_DBD=1
stop_one "$D/munge/munged.pid"  munged

# SLURM_LOCAL_CGROUP=1 leaves empty cgroup v1 dirs slurm_<host> behind: remove
# them (rmdir only succeeds on empty cgroups, so nothing running is touched)
for cg in /sys/fs/cgroup/*/slurm_"$(hostname -s)"; do
  [ -d "$cg" ] || continue
  find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
done

if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$SLURM_CONF" ]; then
  rm -f /etc/slurm/slurm.conf
fi
if [ "$PURGE" = 1 ]; then log "removing $D"; rm -rf "$D"; fi
log "stopped"
