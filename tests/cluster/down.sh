#!/usr/bin/env bash
# Stops a cluster started by up.sh and removes its directory.
#
# Usage: tests/cluster/down.sh WORKDIR
# Env:   KEEP_CLUSTER_DIR=1   keep WORKDIR (logs, kubeconfig, etcd data)
#        DOWN_GRACE           seconds each process gets after SIGTERM before SIGKILL (default 5)
#
# Kills the pids in WORKDIR/pids in reverse start order (kwok ... etcd). A pid is only
# signalled while its command line still mentions WORKDIR, so a pid recycled by an unrelated
# process after the cluster died is left alone.
set -euo pipefail

log() { echo "[down] $*" >&2; }
die() { echo "[down] ERROR: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 WORKDIR"
[ -d "$1" ] || { log "$1 does not exist; nothing to do"; exit 0; }
W=$(cd "$1" && pwd -P)
grace=${DOWN_GRACE:-5}

# shellcheck source=procs.sh
source "$(dirname "${BASH_SOURCE[0]}")/procs.sh"
ours() {
  local cmdline
  alive "$1" || return 1
  cmdline=$(tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *"$W/"* ]]
}

if [ -f "$W/pids" ]; then
  mapfile -t pids < <(grep -E '^[0-9]+$' "$W/pids" || true)
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid=${pids[$i]}
    ours "$pid" || continue
    name=$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null || echo "?")")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + grace))
    while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    if alive "$pid"; then
      log "$name (pid $pid) still running after ${grace}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 5))
      while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
      if alive "$pid"; then log "WARNING: $name (pid $pid) survived SIGKILL"; fi
    fi
  done
fi

if [ "${KEEP_CLUSTER_DIR:-0}" = 1 ]; then
  log "keeping $W"
elif [ -f "$W/pids" ] || [ -f "$W/kubeconfig" ]; then
  rm -rf "$W"
  log "removed $W"
else
  # Refuse to rm -rf a directory up.sh did not make.
  die "$W has no pids or kubeconfig file; not removing it"
fi
