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

log "compiling the tests"
cargo test --workspace --locked --no-run

base=/dev/shm
[ -d "$base" ] && [ -w "$base" ] || base=${TMPDIR:-/tmp}
work=$(mktemp -d "$base/resurgo-tests.XXXXXX")
trap 'tests/cluster/down.sh "$work"' EXIT
env_file=$(tests/cluster/up.sh "$work")
# shellcheck disable=SC1090
source "$env_file"

log "running unit and integration tests against $(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')"
cargo test --workspace --locked -- --include-ignored "$@"
