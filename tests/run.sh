#!/usr/bin/env bash
# Runs every test: the unit tests, then the integration tests against a real control plane
# (kube-apiserver, etcd, kube-controller-manager, kube-scheduler, kwok) started for this run
# and shared by all of them, then torn down.
#
# Usage: tests/run.sh [extra arguments for the test binaries, e.g. a test name filter]
# The first run on a machine builds the control plane (see tests/cluster/build.sh).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
log() { echo "[tests] $*" >&2; }

command -v cargo >/dev/null || { log "ERROR: cargo is not on PATH; install Rust (rustup)"; exit 1; }

log "building the control plane (cached after the first run)"
tests/cluster/build.sh >/dev/null
log "building MinIO for the S3 store tests (cached after the first run)"
minio_bin=$(tests/cluster/build-minio.sh)

log "compiling the operator and the tests"
cargo build --locked -p resurgo
cargo test --workspace --locked --no-run

base=/dev/shm
[ -d "$base" ] && [ -w "$base" ] || base=${TMPDIR:-/tmp}
work=$(mktemp -d "$base/resurgo-tests.XXXXXX")
operator=
minio=
minio_data=
stop() {
  if [ -n "$operator" ]; then kill "$operator" 2>/dev/null && wait "$operator" 2>/dev/null || true; fi
  if [ -n "$minio" ]; then kill "$minio" 2>/dev/null && wait "$minio" 2>/dev/null || true; fi
  if [ -n "$minio_data" ]; then rm -rf "$minio_data"; fi
  tests/cluster/down.sh "$work"
}
trap stop EXIT
env_file=$(tests/cluster/up.sh "$work")
# shellcheck disable=SC1090
source "$env_file"

# A real S3 server (MinIO) for the S3 BackupStore tests, on a disk directory (MinIO wants
# O_DIRECT, which tmpfs lacks), with throwaway root credentials.
minio_data=$(mktemp -d "${TMPDIR:-/tmp}/resurgo-minio.XXXXXX")
read -r minio_port minio_console < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
export RESURGO_MINIO_ENDPOINT="http://127.0.0.1:$minio_port"
export RESURGO_MINIO_ACCESS_KEY=resurgo-tests
RESURGO_MINIO_SECRET_KEY=$(openssl rand -hex 16)
export RESURGO_MINIO_SECRET_KEY
MINIO_ROOT_USER=$RESURGO_MINIO_ACCESS_KEY MINIO_ROOT_PASSWORD=$RESURGO_MINIO_SECRET_KEY \
  "$minio_bin/minio" server "$minio_data" --address "127.0.0.1:$minio_port" \
  --console-address "127.0.0.1:$minio_console" --quiet >"$work/minio.log" 2>&1 &
minio=$!
minio_ready() {
  python3 -c 'import sys,urllib.request; urllib.request.urlopen(sys.argv[1] + "/minio/health/ready", timeout=2)' \
    "$RESURGO_MINIO_ENDPOINT" 2>/dev/null
}
for _ in $(seq 1 200); do
  minio_ready && break
  kill -0 "$minio" 2>/dev/null || { log "ERROR: MinIO exited:"; tail -20 "$work/minio.log" >&2; exit 1; }
  sleep 0.3
done
minio_ready || { log "ERROR: MinIO not ready after 60 s:"; tail -20 "$work/minio.log" >&2; exit 1; }
log "MinIO running at $RESURGO_MINIO_ENDPOINT (pid $minio)"

# The CRDs first, then one operator for the whole run, as a cluster would have them.
kubectl apply --server-side --field-manager=resurgo-tests -f crds/ >/dev/null
kubectl wait --for=condition=Established --timeout=60s -f crds/ >/dev/null
export RESURGO_OPERATOR_LOG="$work/operator.log"
# It leaves alone the plans labelled resurgo.dev/test-operator: tests that start their own
# operators (tests/tests/operations.rs, with the chart's RBAC, or two replicas electing a
# leader) label their plans so, and select them with resurgo.dev/test-operator=<id>.
# Its metrics go to any free port, so that runs in parallel do not collide.
RUST_LOG=${RUST_LOG:-warn,resurgo=debug} target/debug/resurgo run \
  --selector '!resurgo.dev/test-operator' --metrics-addr 127.0.0.1:0 >"$RESURGO_OPERATOR_LOG" 2>&1 &
operator=$!
log "operator running (pid $operator, log $RESURGO_OPERATOR_LOG)"

log "running unit and integration tests against $(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')"
status=0
cargo test --workspace --locked --no-fail-fast -- --include-ignored "$@" || status=$?
kill -0 "$operator" 2>/dev/null || { log "ERROR: the operator died during the tests; its log:"; tail -50 "$RESURGO_OPERATOR_LOG" >&2; status=1; }
if [ "$status" -ne 0 ]; then
  log "the operator's log, last lines:"
  tail -40 "$RESURGO_OPERATOR_LOG" >&2
fi
# The benchmarks run on up.sh's lean control plane, which no test above uses.
log "checking the benchmarks' lean control plane (tests/cluster/lean-check.sh)"
tests/cluster/lean-check.sh "$(mktemp -u "$base/resurgo-lean.XXXXXX")" || status=1
exit "$status"
