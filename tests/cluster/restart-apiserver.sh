#!/usr/bin/env bash
# Restarts the kube-apiserver of a cluster started by up.sh, and only it: kills it with
# SIGKILL (a crash: no graceful close of the watches), starts it again with the very same
# command line, GOGC, port and certificates, records the new pid in WORKDIR/pids in place of the
# old one (so down.sh stops it), and waits until it is ready again. etcd keeps the data.
#
# Usage: tests/cluster/restart-apiserver.sh WORKDIR [SECONDS_DOWN]
#   SECONDS_DOWN  how long the API server stays down before it is started again (default 0)
# Env: UP_TIMEOUT  seconds allowed for it to become ready again (default 120)
set -euo pipefail

log() { echo "[restart-apiserver] $*" >&2; }
die() { echo "[restart-apiserver] ERROR: $*" >&2; exit 1; }

[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 WORKDIR [SECONDS_DOWN]"
[ -f "$1/pids" ] || die "$1 has no pids file: not a cluster started by up.sh"
W=$(cd "$1" && pwd -P)
down_for=${2:-0}
timeout_s=${UP_TIMEOUT:-120}

# shellcheck source=procs.sh
source "$(dirname "${BASH_SOURCE[0]}")/procs.sh"

# The kube-apiserver among the recorded pids: argv[0] names it and its command line
# mentions WORKDIR (a recycled pid of an unrelated process does not).
old=
while read -r pid; do
  [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" || continue
  mapfile -d '' argv < "/proc/$pid/cmdline" || continue
  if [ "$(basename "${argv[0]}")" = kube-apiserver ] && [[ ${argv[*]} == *"$W/"* ]]; then
    old=$pid
    break
  fi
done < "$W/pids"
[ -n "$old" ] || die "no running kube-apiserver of $W in $W/pids"

# Its GOGC too (up.sh's UP_LEAN sets it), read before the process is gone.
gogc=$(tr '\0' '\n' < "/proc/$old/environ" | sed -n 's/^GOGC=//p')

log "killing kube-apiserver (pid $old)"
kill -KILL "$old"
deadline=$((SECONDS + 10))
while alive "$old"; do
  [ "$SECONDS" -lt "$deadline" ] || die "kube-apiserver (pid $old) survived SIGKILL"
  sleep 0.05
done
# The pid turns zombie when its main thread exits, possibly before the other threads have
# closed the listening socket: wait until the port can be bound again (SO_REUSEADDR, as Go).
port=
for arg in "${argv[@]}"; do
  case $arg in --secure-port=*) port=${arg#--secure-port=} ;; esac
done
[ -n "$port" ] || die "kube-apiserver's command line has no --secure-port="
port_free() {
  python3 -c 'import socket,sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$port" 2>/dev/null
}
until port_free; do
  [ "$SECONDS" -lt "$deadline" ] || die "port $port still in use 10 s after kube-apiserver was killed"
  sleep 0.05
done
sleep "$down_for"

# Appended: the log of both runs in one file, as up.sh named it.
echo "---- restarted by $0 at $(date -u +%FT%TZ)" >> "$W/kube-apiserver.log"
if [ -n "$gogc" ]; then export GOGC=$gogc; else unset GOGC; fi
"${argv[@]}" </dev/null >>"$W/kube-apiserver.log" 2>&1 &
new=$!
sed -i "s/^$old\$/$new/" "$W/pids"
log "started kube-apiserver again (pid $new)"

deadline=$((SECONDS + timeout_s))
until "$(dirname "${argv[0]}")/kubectl" --kubeconfig="$W/kubeconfig" get --raw=/readyz >/dev/null 2>&1; do
  alive "$new" || { tail -n 40 "$W/kube-apiserver.log" >&2; die "kube-apiserver (pid $new) exited"; }
  [ "$SECONDS" -lt "$deadline" ] || die "kube-apiserver not ready ${timeout_s}s after its restart"
  sleep 0.2
done
log "kube-apiserver ready again"
