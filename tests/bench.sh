#!/usr/bin/env bash
# Every benchmark of docs/benchmarks.md from one command, on this machine, each on fresh
# local control planes (tests/cluster/up.sh; torn down after each), then the headline figures
# and ratios of this run in one summary:
#   1. the recovery bench (tests/src/bin/bench.rs): examples/lazio and a generated plan of
#      1,000 services in 5 tiers with simulated readiness delays: ordering overhead per tier
#      boundary p50/p99, recovery time / critical path, operator peak RSS and CPU seconds;
#   2. the tier boundary sample: the recovery bench on 160 services in 16 tiers, 7 runs, so
#      that the tier boundary p99 comes from 105 boundaries and not from 4 (--runs pools them);
#   3. the backup bench (tests/src/bin/backup_bench.rs): backup and restore of 10,000 objects
#      against the raw create rate of the same API server;
#   4. the chaos loop (bench --chaos N): N recoveries with the operator killed (kill -9) at a
#      random moment and restarted, and the invariants each one violated (0 expected);
#   5. the lockdown bench (bench --lockdown): 1,000 human bindings suspended by a Lockdown and
#      restored by Normal, timed from watches against the raw delete rate, 3 runs.
#
# Usage: tests/bench.sh
# Env:   CHAOS_TRIALS    kill -9 trials of the chaos loop (default 20)
#        BACKUP_OBJECTS  objects of the backup bench (default 10000)
#        BENCH_ARGS      extra arguments for the recovery bench, e.g. "--scenario lazio"
#        BOUNDARY_RUNS   runs of the tier boundary sample (default 7; 0 skips it)
#        LOCKDOWN_RUNS   lockdowns and restores of the lockdown bench (default 3)
# The full output goes to target/bench/report.txt as well. It takes about 25-35 minutes on
# 2 cores (the 1,000-service recovery alone about 10): the machine should be otherwise idle.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
log() { echo "[bench.sh] $*" >&2; }
chaos_trials=${CHAOS_TRIALS:-20}
backup_objects=${BACKUP_OBJECTS:-10000}
boundary_runs=${BOUNDARY_RUNS:-7}
lockdown_runs=${LOCKDOWN_RUNS:-3}

log "building the operator and the benches (release)"
cargo build --release --locked -p resurgo --bin resurgo
cargo build --release --locked -p resurgo-tests --bin bench --bin backup-bench
operator=$root/target/release/resurgo
mkdir -p target/bench
report=target/bench/report.txt
: > "$report"

# The backup bench runs against a cluster it is given: one of its own, torn down on exit.
work=
stop() { if [ -n "$work" ]; then tests/cluster/down.sh "$work" || true; fi; }
trap stop EXIT

log "1/5 the recovery bench: examples/lazio and 1,000 services in 5 tiers"
# shellcheck disable=SC2086
target/release/bench --operator "$operator" ${BENCH_ARGS:-} | tee -a "$report"

boundaries=$report.boundaries
: > "$boundaries"
if [ "$boundary_runs" -gt 0 ]; then
  log "2/5 the tier boundary sample: 160 services in 16 tiers, $boundary_runs runs"
  target/release/bench --operator "$operator" --scenario generated --services 160 --tiers 16 \
    --min-delay-ms 200 --max-delay-ms 1000 --runs "$boundary_runs" | tee "$boundaries"
fi

log "3/5 the backup bench: $backup_objects objects"
base=/dev/shm
[ -d "$base" ] && [ -w "$base" ] || base=${TMPDIR:-/tmp}
work=$base/resurgo-backup-bench.$$
env_file=$(tests/cluster/up.sh "$work")
(
  # shellcheck disable=SC1090
  source "$env_file"
  echo
  echo "== backup bench: $backup_objects ConfigMaps, backed up to a filesystem store and restored through a RecoveryPlan"
  target/release/backup-bench --operator "$operator" --objects "$backup_objects"
) | tee -a "$report"
tests/cluster/down.sh "$work"
work=

log "4/5 the chaos loop: $chaos_trials kill -9 trials"
target/release/bench --operator "$operator" --chaos "$chaos_trials" | tee -a "$report"

log "5/5 the lockdown bench: 1,000 human bindings, $lockdown_runs runs"
target/release/bench --operator "$operator" --lockdown --runs "$lockdown_runs" | tee -a "$report"

# The sample's reports join the full output only after the summary's grep of it, so that
# its per-run lines stay out of the summary; the summary takes its pooled line alone.
{
  echo
  echo "== summary of this run ($(date -u +%FT%TZ), $(nproc) cores, $(uname -r))"
  grep -E "^== (scenario|backup bench|chaos)|ordering overhead per tier boundary, p(50|99)|recovery time / critical path  |operator peak RSS|operator CPU since start|raw create rate|backup rate / raw|restore rate / raw|^chaos summary" "$report" || true
  # Of the lockdown bench, its title, the raw delete rate, the three targets and the check.
  grep -E "^== lockdown bench|^figure .* median .* worst|^raw (delete|save \+ delete \+ Event) of all|^lockdown: (cluster-admin gone|all suspended)|^restore: all back|^restored byte-identical|^NOT RESTORED" "$report" || true
  # Of the tier boundary sample, only the figures pooled over its runs.
  grep -E "runs pooled" "$boundaries" | sed 's/^/tier boundary sample: /' || true
} | tee -a "$report.summary"
cat "$boundaries" "$report.summary" >> "$report" && rm -f "$report.summary" "$boundaries"
log "full output: $report"
