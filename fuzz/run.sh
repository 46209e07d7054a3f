#!/usr/bin/env bash
# Runs every fuzz target for a fixed number of executions (default 200000 each), starting
# from the committed seeds in fuzz/corpus/<target>. New inputs libFuzzer finds go to a
# scratch corpus, not the committed one; a crash leaves its input in fuzz/artifacts/.
#
# Usage: fuzz/run.sh [RUNS] [TARGET...]     (needs the nightly toolchain; installs cargo-fuzz)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
runs=${1:-200000}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(plan backup_open)

rustup toolchain list | grep -q '^nightly' || { echo "fuzz: the nightly toolchain is needed: rustup toolchain install nightly" >&2; exit 1; }
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
for target in "${targets[@]}"; do
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  echo "fuzz: $target, $runs executions" >&2
  cargo +nightly fuzz run "$target" "$scratch" "corpus/$target" -- -runs="$runs" -max_len=16384 -timeout=10
  rm -rf "$scratch"
done
