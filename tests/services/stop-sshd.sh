#!/usr/bin/env bash
# stop-sshd.sh -- stop the sshd started by start-sshd.sh, by the PID in its pid file only (checked to be an
# sshd, not a recycled PID); SIGKILL after 5 s. --purge also deletes $SSHD_LOCAL_DIR. Idempotent.
set -uo pipefail

D=${SSHD_LOCAL_DIR:-/run/bachglass-sshd}
log() { printf '[stop-sshd %s] %s\n' "$(date +%T)" "$*" >&2; }

running() {
  local st
  kill -0 "$1" 2>/dev/null || return 1
  st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null)
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

pid=$(cat "$D/sshd.pid" 2>/dev/null || true)
if [[ $pid =~ ^[0-9]+$ ]] && running "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = sshd ]; then
  log "sshd: SIGTERM $pid"
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 50); do running "$pid" || break; sleep 0.1; done
  if running "$pid"; then log "sshd: SIGKILL $pid"; kill -KILL "$pid" 2>/dev/null; fi
else
  log "sshd: not running"
fi
rm -f "$D/sshd.pid"
if [ "${1:-}" = --purge ]; then rm -rf "$D"; fi
log "stopped"
