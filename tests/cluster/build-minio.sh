#!/usr/bin/env bash
# Builds the MinIO server (an S3-compatible store with object lock) for the S3 BackupStore
# tests, with the ordinary `go` client from the Go module proxy, at the version pinned in
# minio-versions.env. MinIO's released go.mod has no replace directives, so `go install
# module@version` builds it as released.
#
# The binary goes to a cache outside the repo, keyed by the version, the Go version and this
# script; a second run prints the directory and does nothing else.
#
# Usage: tests/cluster/build-minio.sh    # prints the bin directory on stdout
# Env:   RESURGO_CACHE (default ~/.cache/resurgo)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=minio-versions.env
source "$here/minio-versions.env"

log() { echo "[build-minio] $*" >&2; }
die() { echo "[build-minio] ERROR: $*" >&2; exit 1; }

command -v go >/dev/null || die "the Go toolchain is not on PATH; install Go >= 1.26 and retry"
go_version=$(go env GOVERSION)
export GOTOOLCHAIN=local CGO_ENABLED=0

key=$(cat "$here/minio-versions.env" "$0" <(echo "$go_version") | sha256sum | cut -c1-16)
cache=${RESURGO_CACHE:-$HOME/.cache/resurgo}
out="$cache/minio-bin/${MINIO_VERSION}-${key}"

if [ -f "$out/.complete" ]; then
  echo "$out"
  exit 0
fi

mkdir -p "$out"
started=$(date +%s)
log "building MinIO ${MINIO_VERSION} into $out (first run on this machine)"
GOBIN="$out" GOFLAGS=-trimpath go install -ldflags "-s -w" "github.com/minio/minio@${MINIO_VERSION}"
"$out/minio" --version >/dev/null || die "the built minio does not run"

took=$(( $(date +%s) - started ))
log "done in ${took}s"
echo "$took" > "$out/.build-seconds"
touch "$out/.complete"
echo "$out"
