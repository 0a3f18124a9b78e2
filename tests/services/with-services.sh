#!/usr/bin/env bash
# with-services.sh CMD... -- run CMD (the test suite) with the live services of the integration tests:
#   - a real single-node SLURM cluster with accounting (munged, slurmctld, slurmd, slurmdbd on a private
#     MariaDB): tests/test_slurm.py runs the tiny study through `snakemake --profile` and sbatch;
#   - an OpenSSH server on 127.0.0.1: tests/test_remotes.py pushes to and pulls from a DVC SSH remote.
# They start only where the machine allows it: root, Debian (apt-get), and no SLURM of the machine's own
# (an /etc/slurm/slurm.conf that is not our symlink). Elsewhere CMD runs without them and those tests are
# skipped, with the reason this script exports. BACHGLASS_LIVE=0 leaves them out on purpose.
# Every daemon is stopped by the PID it recorded, from an EXIT trap, however CMD ends; CMD's exit status
# is this script's.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# root-owned and outside world-writable /tmp: sshd's StrictModes checks every directory above its key files
export BACHGLASS_SERVICES_DIR=${BACHGLASS_SERVICES_DIR:-/run/bachglass-services}
# accounting (slurmdbd), and two GPUs as a GRES without devices: the slurm profile's GPU requests go
# through SLURM as on a GPU cluster, while the jobs train on the CPU
export SLURM_LOCAL_DIR=$BACHGLASS_SERVICES_DIR/slurm SLURM_LOCAL_DBD=1 SLURM_LOCAL_GPUS=2
export SSHD_LOCAL_DIR=$BACHGLASS_SERVICES_DIR/sshd
log() { printf '[with-services %s] %s\n' "$(date +%T)" "$*" >&2; }

why=""
if [ "${BACHGLASS_LIVE:-1}" = 0 ]; then
  why="BACHGLASS_LIVE=0"
elif [ "$(id -u)" != 0 ]; then
  why="the live SLURM cluster and sshd need root (they run as root daemons; CI runs as root)"
elif ! command -v apt-get >/dev/null; then
  why="the live SLURM cluster and sshd are installed from Debian packages (no apt-get here)"
elif [ -e /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" != "$SLURM_LOCAL_DIR/slurm.conf" ]; then
  why="this machine has a SLURM of its own (/etc/slurm/slurm.conf); the test cluster would replace it"
elif [ -n "${SLURM_CONF:-}" ]; then
  why="SLURM_CONF is set ($SLURM_CONF): the tests' sbatch calls would go to that cluster"
elif [ ! -d "$SLURM_LOCAL_DIR/run" ] && ps -eo stat=,comm= | awk '$1 !~ /^Z/ && $2 ~ /^(slurmctld|slurmd|munged)$/ {f = 1} END {exit !f}'; then
  why="SLURM daemons of the machine's own are running (configless?); the test cluster would clash with them"
elif [ -e "$BACHGLASS_SERVICES_DIR" ] && [ "$(stat -c %u "$BACHGLASS_SERVICES_DIR")" != 0 ]; then
  why="$BACHGLASS_SERVICES_DIR exists and is not root's; refusing to run root daemons from it"
fi

started=0
teardown() {
  local rc=$?
  if [ $started = 1 ]; then
    bash "$HERE/stop-slurm.sh" --purge || true
    bash "$HERE/stop-sshd.sh" --purge || true
    rmdir "$BACHGLASS_SERVICES_DIR" 2>/dev/null || true
  fi
  exit $rc
}
trap teardown EXIT
trap 'exit 130' INT TERM

if [ -z "$why" ]; then
  started=1
  need=()
  for pkg in slurm-wlm munge slurmdbd mariadb-server-core mariadb-client-core openssh-server; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]} from Debian"
    apt-get update -qq || why="apt-get update failed"
  fi
  # (each start script installs what it misses itself, and stops none of the machine's own daemons)
  if [ -z "$why" ]; then
    mkdir -p -m 0755 "$BACHGLASS_SERVICES_DIR"
    if bash "$HERE/start-slurm.sh" && bash "$HERE/start-sshd.sh"; then
      # shellcheck disable=SC1091
      source "$SLURM_LOCAL_DIR/env.sh"  # SLURM_CONF: the tests' sbatch, squeue and sacct talk to this cluster
      # shellcheck disable=SC1091
      source "$SSHD_LOCAL_DIR/env.sh"
      export BACHGLASS_SLURM=$SLURM_LOCAL_DIR
    else
      why="the live services did not start (see the log above)"
      [ -n "${CI:-}" ] && { log "ERROR: $why"; exit 1; }
    fi
  fi
fi
if [ -n "$why" ]; then
  export BACHGLASS_SERVICES_SKIPPED="$why"
  log "without live SLURM and sshd: $why"
fi
"$@"
