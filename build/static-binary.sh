#!/usr/bin/env bash
# Builds the statically linked `resurgo` binary that the container image ships, and checks
# that it is static. The Dockerfile runs exactly this script; a test
# (tests/tests/dockerfile.rs) checks that the Dockerfile copies the path it prints.
#
# Usage: build/static-binary.sh               builds, then prints the binary's path
#        build/static-binary.sh --print-path  prints the path only
#
# glibc with +crt-static rather than musl: the x86_64-unknown-linux-gnu target ships with
# every Rust toolchain, so the image is built with the same target the tests use. The flag is
# given with an explicit --target, so build scripts and proc-macros stay dynamic, as they must.
# The operator resolves no host names in a cluster (KUBERNETES_SERVICE_HOST is an IP), so
# glibc's NSS, which a static binary cannot load, is not needed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target=x86_64-unknown-linux-gnu
profile=dist
binary="target/$target/$profile/resurgo"
if [ "${1:-}" = "--print-path" ]; then
  echo "$binary"
  exit 0
fi

RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --locked --profile "$profile" --target "$target" -p resurgo --bin resurgo >&2

# A static executable has no program interpreter (PT_INTERP) and needs no shared library.
if readelf -l "$binary" | grep -q 'Requesting program interpreter'; then
  echo "static-binary.sh: $binary is dynamically linked" >&2
  exit 1
fi
if readelf -d "$binary" 2>/dev/null | grep -q '(NEEDED)'; then
  echo "static-binary.sh: $binary needs shared libraries" >&2
  exit 1
fi
"$binary" --version >&2
echo "$binary"
