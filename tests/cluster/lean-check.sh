#!/usr/bin/env bash
# Checks that up.sh's UP_LEAN=true (the control plane the benchmarks run on) starts and is
# what up.sh says it is: the admin kubeconfig authenticates with a token as a member of
# system:masters, LimitRanger admission is off (a LimitRange's default limits are not
# applied to a new pod), the Go components run with GOGC=400, kwok still makes a pod Ready,
# and restart-apiserver.sh keeps all of it. The tests themselves run on the default control
# plane; without this check a broken lean mode would only show in a benchmark run.
#
# Usage: tests/cluster/lean-check.sh WORKDIR   (WORKDIR must not exist or be empty; it is
# torn down at the end, kept on failure for the logs)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { echo "[lean-check] $*" >&2; }
fail() { echo "[lean-check] FAILED: $*" >&2; exit 1; }

[ $# -eq 1 ] || fail "usage: $0 WORKDIR"
work=$1
ok=0
finish() {
  if [ "$ok" = 1 ]; then "$here/down.sh" "$work" >/dev/null 2>&1 || true
  else KEEP_CLUSTER_DIR=1 "$here/down.sh" "$work" >/dev/null 2>&1 || true; fi
}
trap finish EXIT

up_log=$(mktemp)
env_file=$(UP_LEAN=true "$here/up.sh" "$work" 2>"$up_log") || { cat "$up_log" >&2; rm -f "$up_log"; fail "up.sh with UP_LEAN=true"; }
rm -f "$up_log"
# shellcheck disable=SC1090
source "$env_file"

grep -q '^    token: ' "$KUBECONFIG" || fail "the lean kubeconfig has no token"
grep -q 'client-certificate-data' "$KUBECONFIG" && fail "the lean kubeconfig still has a client certificate"
groups=$(kubectl auth whoami -o jsonpath='{.status.userInfo.username} {.status.userInfo.groups}')
[[ $groups == "admin "*system:masters* ]] || fail "the token authenticates as '$groups', not admin in system:masters"

while read -r pid; do
  [ -r "/proc/$pid/environ" ] || continue
  name=$(basename "$(tr '\0' '\n' < "/proc/$pid/cmdline" | head -1)")
  tr '\0' '\n' < "/proc/$pid/environ" | grep -qx 'GOGC=400' || fail "$name (pid $pid) does not run with GOGC=400"
done < "$work/pids"

kubectl create namespace lean-check >/dev/null
kubectl -n lean-check create -f - >/dev/null <<'EOF'
apiVersion: v1
kind: LimitRange
metadata: {name: defaults}
spec:
  limits:
  - type: Container
    default: {memory: 64Mi}
EOF
kubectl -n lean-check run probe --image=registry.invalid/probe:1 --restart=Never >/dev/null
limits=$(kubectl -n lean-check get pod probe -o jsonpath='{.spec.containers[0].resources}')
[ -z "$limits" ] || [ "$limits" = '{}' ] || fail "LimitRanger admission is on: the pod got resources $limits"
kubectl -n lean-check wait --for=condition=Ready pod/probe --timeout=60s >/dev/null || fail "kwok did not make the pod Ready"

# restart-apiserver.sh (the chaos tests' crash) keeps the lean settings.
"$here/restart-apiserver.sh" "$work" 2>/dev/null || fail "restart-apiserver.sh on the lean control plane"
apiserver=$(tail -n +2 "$work/pids" | head -1)
tr '\0' '\n' < "/proc/$apiserver/environ" | grep -qx 'GOGC=400' || fail "the restarted kube-apiserver does not run with GOGC=400"
kubectl auth whoami >/dev/null || fail "the token does not authenticate after the restart"

ok=1
log "ok: token auth as system:masters, no LimitRanger admission, GOGC=400 (kept by restart-apiserver.sh), pods become Ready"
