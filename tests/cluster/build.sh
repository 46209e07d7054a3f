#!/usr/bin/env bash
# Builds the real Kubernetes control plane used by the tests and the demo:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes),
# etcd (the 3.6.x k8s pins), kwok and helm, from the Go module proxy with the ordinary
# `go` client, at the versions pinned in versions.env and k8s-tools/go.{mod,sum}.
#
# The binaries go to a cache outside the repo, keyed by the versions, the Go version and
# this script, so a second run prints the directory and does nothing else.
#
# Usage: tests/cluster/build.sh          # prints the bin directory on stdout
# Env:   RESURGO_CACHE (default ~/.cache/resurgo)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

log() { echo "[build] $*" >&2; }
die() { echo "[build] ERROR: $*" >&2; exit 1; }

command -v go >/dev/null || die "the Go toolchain is not on PATH; install Go >= 1.26 (go.dev/dl) and retry"
go_version=$(go env GOVERSION)
case "$go_version" in
  go1.2[6-9]*|go1.[3-9]*) ;;
  *) die "Go >= 1.26 is needed to build Kubernetes ${KUBERNETES_VERSION}, found ${go_version}" ;;
esac

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-trimpath -mod=readonly"

key=$(cat "$here/versions.env" "$here/k8s-tools/go.mod" "$here/k8s-tools/go.sum" "$0" \
  <(echo "$go_version") | sha256sum | cut -c1-16)
cache=${RESURGO_CACHE:-$HOME/.cache/resurgo}
out="$cache/k8s-bin/${KUBERNETES_VERSION}-${key}"

if [ -f "$out/.complete" ]; then
  echo "$out"
  exit 0
fi

mkdir -p "$out"
started=$(date +%s)
log "building the control plane into $out (first run on this machine: about 10 minutes on 2 cores)"

# Stamp the versions exactly as upstream's hack/lib/version.sh does, so that /version,
# `kubectl version` and helm's .Capabilities.KubeVersion report the real release.
minor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)
build_date=2026-01-01T00:00:00Z
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=$build_date"
done

(
  cd "$here/k8s-tools"
  log "kube-apiserver, kube-controller-manager, kube-scheduler, kubectl ${KUBERNETES_VERSION} and etcd ${ETCD_VERSION}"
  # One `go build` for all five: shared packages compile once, then five links.
  go build -tags notest,grpcnotrace -ldflags "$ldflags" -o "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl go.etcd.io/etcd/server/v3
  mv "$out/server" "$out/etcd"
)

# kwok and helm build against their own released go.mod (no replace directives), so that
# their dependency choices never move the Kubernetes module's.
log "kwok ${KWOK_VERSION}"
GOBIN="$out" GOFLAGS=-trimpath go install \
  -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION}" \
  "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}"
log "helm ${HELM_VERSION}"
GOBIN="$out" GOFLAGS=-trimpath go install \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
  "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"

# kwok needs its stage definitions; the "fast" ones ship as YAML inside its module.
kwok_dir=$(go mod download -json "sigs.k8s.io/kwok@${KWOK_VERSION}" \
  | python3 -c 'import json,sys;print(json.load(sys.stdin)["Dir"])')
# The fast pod-ready stage, with the readiness delay of kwok's general stage: a pod annotated
# pod-ready.stage.kwok.x-k8s.io/delay (a Go duration, e.g. "2500ms") becomes Running and
# Ready that long after it is scheduled (a Job's pod completes right after); without the
# annotation the delay is 0, as before. The benchmark (tests/src/bin/bench.rs) uses it.
pod_ready_with_delay() {
  python3 - "$1" <<'EOF'
import sys
text = open(sys.argv[1]).read()
anchor = "\n  next:\n"
assert text.count(anchor) == 1, "kwok's fast pod-ready stage changed shape: no single '  next:'"
delay = """
  delay:
    durationMilliseconds: 0
    durationFrom:
      expressionFrom: '.metadata.annotations["pod-ready.stage.kwok.x-k8s.io/delay"]'"""
sys.stdout.write(text.replace(anchor, delay + anchor))
EOF
}
for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
         pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
  if [ "$f" = pod/fast/pod-ready.yaml ]; then
    pod_ready_with_delay "$kwok_dir/kustomize/stage/$f"
  else
    cat "$kwok_dir/kustomize/stage/$f"
  fi
  echo '---'
done > "$out/kwok-stages.yaml"
grep -q 'pod-ready.stage.kwok.x-k8s.io/delay' "$out/kwok-stages.yaml" \
  || die "the pod-ready delay did not make it into kwok-stages.yaml"

"$out/kube-apiserver" --version | grep -q "Kubernetes ${KUBERNETES_VERSION}" \
  || die "kube-apiserver does not report ${KUBERNETES_VERSION}: version stamping failed"

took=$(( $(date +%s) - started ))
log "done in ${took}s; $(du -sh "$out" | cut -f1) of binaries"
echo "$took" > "$out/.build-seconds"
touch "$out/.complete"
echo "$out"
