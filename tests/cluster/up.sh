#!/usr/bin/env bash
# Starts a throwaway Kubernetes control plane for the integration tests and the demo:
# etcd, kube-apiserver (RBAC enforced), kube-controller-manager, kube-scheduler and kwok with
# one fake, untainted Node, all on 127.0.0.1 with random free ports. The binaries come from
# build.sh (instant once cached).
#
# Usage: tests/cluster/up.sh WORKDIR      # e.g. /dev/shm/resurgo-cluster (tmpfs makes etcd fast)
#
# WORKDIR must not exist or be empty. up.sh leaves in it:
#   kubeconfig   admin (client certificate, group system:masters)
#   env          `source` it: KUBECONFIG, PATH (bin dir first), RESURGO_K8S_BIN, RESURGO_CLUSTER_DIR
#   pids         one pid per line, in start order (down.sh kills them in reverse)
#   *.log        one log per component
# Progress goes to stderr; the only line on stdout is the path of the env file.
# On any failure it prints the relevant log tail, stops what it started (keeping WORKDIR for
# the logs) and exits non-zero. Tear down with: tests/cluster/down.sh WORKDIR
#
# Env: UP_PROFILING true serves kube-apiserver's /debug/pprof (for benchmarks; default false)
# Env: UP_LEAN      true runs the control plane with less CPU, for the benchmarks (default
#                   false: the tests and the demo run the components' defaults). On 2 cores
#                   the simulated control plane itself is the bottleneck of a 1,000-service
#                   recovery; this takes out three costs that serve nothing here:
#   - the LimitRanger and ResourceQuota admission plugins: no LimitRange or ResourceQuota
#     exists, yet in a namespace first seen less than 30 s ago each does a live LIST inside
#     the admission of the create (LimitRanger: of every pod), a consistent read that waits
#     for the watch cache under load (90 ms per pod at 1,000 services);
#   - Go's garbage collector at GOGC=400 instead of 100 in every component (the API server
#     spent 16 % of its CPU in it, mostly on 1 MB objects);
#   - a static bearer token for the admin kubeconfig instead of the client certificate,
#     whose chain the API server verifies again on every request (5 % of its CPU).
# Env: UP_TIMEOUT  seconds allowed for each wait (default 120; apiserver start is ~5-20 s on 2 cores)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { echo "[up] $*" >&2; }
die() { echo "[up] ERROR: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 WORKDIR"
command -v openssl >/dev/null || die "openssl is not on PATH; it is needed to make the cluster's certificates (apt-get install openssl)"
command -v python3 >/dev/null || die "python3 is not on PATH; it is needed to pick free ports"
timeout_s=${UP_TIMEOUT:-120}
lean=${UP_LEAN:-false}
case $lean in true|false) ;; *) die "UP_LEAN must be true or false, not '$lean'" ;; esac
started_at=$SECONDS

bin=$("$here/build.sh")
[ -x "$bin/kube-apiserver" ] || die "build.sh printed '$bin', which has no kube-apiserver"

if [ -e "$1" ] && [ -n "$(ls -A "$1")" ]; then die "$1 exists and is not empty"; fi
mkdir -p "$1"
# Physical absolute path: down.sh only kills processes whose command line mentions it.
W=$(cd "$1" && pwd -P)
cd "$W"
: > pids

# ---------------------------------------------------------------- process bookkeeping
names=() procs=() logs=()
ok=0
cleanup() {
  local rc=$?
  if [ "$ok" = 1 ]; then return; fi
  trap - EXIT INT TERM
  log "failed (exit $rc); stopping what was started; logs kept in $W"
  KEEP_CLUSTER_DIR=1 "$here/down.sh" "$W" || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CMD...: runs CMD in the background with its output in NAME.log.
start() {
  local name=$1; shift
  log "starting $name"
  "$@" </dev/null >"$W/$name.log" 2>&1 &
  names+=("$name") procs+=("$!") logs+=("$W/$name.log")
  echo "$!" >> "$W/pids"
}

# shellcheck source=procs.sh
source "$here/procs.sh"

# check_alive: dies with the log tail of the first started component that exited.
check_alive() {
  local i
  for i in "${!procs[@]}"; do
    if ! alive "${procs[$i]}"; then
      echo "---- last 40 lines of ${logs[$i]}" >&2
      tail -n 40 "${logs[$i]}" >&2 || true
      die "${names[$i]} (pid ${procs[$i]}) exited"
    fi
  done
}

# wait_until DESC LOGNAME CMD...: polls CMD until it succeeds, a component dies, or
# UP_TIMEOUT passes (then prints LOGNAME.log's tail).
wait_until() {
  local desc=$1 logname=$2; shift 2
  local deadline=$((SECONDS + timeout_s))
  log "waiting for $desc"
  until "$@" >/dev/null 2>&1; do
    check_alive
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "---- last 40 lines of $W/$logname.log" >&2
      tail -n 40 "$W/$logname.log" >&2 || true
      die "timed out after ${timeout_s}s waiting for $desc"
    fi
    sleep 0.3
  done
}

# http_ok URL: 2xx from URL. Health endpoints only, so the TLS certificate is not verified.
http_ok() {
  python3 -c 'import ssl,sys,urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2, context=ssl._create_unverified_context())' "$1"
}

# ---------------------------------------------------------------- ports
# Bind all the sockets at once so the ports differ from each other; the kernel picks them
# at random from the ephemeral range, so concurrent clusters do not collide in practice.
read -r etcd_port peer_port api_port kcm_port sched_port < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(5)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
log "ports: etcd $etcd_port (peer $peer_port), apiserver $api_port, controller-manager $kcm_port, scheduler $sched_port"

# ---------------------------------------------------------------- PKI
# ECDSA P-256 keys: instant to generate, and accepted by Go, kubectl and rustls (ring).
log "making certificates in $W/pki"
mkdir pki
(
  cd pki
  ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
  ec ca.key
  openssl req -x509 -new -key ca.key -days 3650 -subj /CN=resurgo-test-ca -out ca.crt \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
  # sign NAME SUBJECT EXTENSIONS: NAME.crt/NAME.key signed by the CA.
  sign() {
    ec "$1.key"
    openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
      -days 3650 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  }
  # rustls checks only the SANs (never the CN): IP:127.0.0.1 is what the kubeconfig uses;
  # the in-cluster names and the first service IP are there for anything that mimics a pod.
  sign apiserver /CN=kube-apiserver "extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  # The apiserver maps CN to the user name and O to groups (--client-ca-file).
  sign admin "/O=system:masters/CN=admin" "extendedKeyUsage=clientAuth"
  # ServiceAccount token signing key (RSA: RS256 is what every real cluster issues).
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
  openssl pkey -in sa.key -pubout -out sa.pub
  rm -f ./*.csr ./*.ext
)

b64() { base64 -w0 < "$1"; }
if [ "$lean" = true ]; then
  # The same identity as the certificate: user admin in system:masters.
  admin_token=$(openssl rand -hex 32)
  printf '%s,admin,admin,"system:masters"\n' "$admin_token" > pki/tokens.csv
  admin_credentials="token: $admin_token"
else
  admin_credentials="client-certificate-data: $(b64 pki/admin.crt)
    client-key-data: $(b64 pki/admin.key)"
fi
cat > kubeconfig <<EOF
apiVersion: v1
kind: Config
clusters:
- name: resurgo-test
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $(b64 pki/ca.crt)
users:
- name: admin
  user:
    $admin_credentials
contexts:
- name: resurgo-test
  context: {cluster: resurgo-test, user: admin, namespace: default}
current-context: resurgo-test
EOF
kubectl=("$bin/kubectl" --kubeconfig="$W/kubeconfig")

# ---------------------------------------------------------------- etcd
if [ "$lean" = true ]; then export GOGC=400; fi
# --unsafe-no-fsync: the data is thrown away anyway; fsync dominates etcd latency.
start etcd "$bin/etcd" --name=default --data-dir="$W/etcd" \
  --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
  --listen-peer-urls="http://127.0.0.1:$peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
  --initial-cluster="default=http://127.0.0.1:$peer_port" \
  --unsafe-no-fsync --log-level=warn
wait_until "etcd /health" etcd http_ok "http://127.0.0.1:$etcd_port/health"

# ---------------------------------------------------------------- kube-apiserver
# --authorization-mode=RBAC: enforced, so tests can impersonate users and use SA tokens
#   (no Node authorizer: there is no kubelet).
# --service-account-*: the issuer and signing key make TokenRequest (`kubectl create token`)
#   work; the ServiceAccount admission plugin stays on (default plugin set).
# --endpoint-reconciler-type=none: the lease reconciler would publish 127.0.0.1 as the
#   `kubernetes` Service endpoint, which validation rejects (loopback).
# --enable-priority-and-fairness=false + inflight 0/0: no request queueing or limits at all
#   (0 disables the limit when APF is off); tests burst requests.
# --cert-dir: only so nothing is ever written to the default /var/run/kubernetes.
apiserver_lean=()
if [ "$lean" = true ]; then
  apiserver_lean=(--disable-admission-plugins=LimitRanger,ResourceQuota --token-auth-file="$W/pki/tokens.csv")
fi
start kube-apiserver "$bin/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$etcd_port" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api_port" \
  --cert-dir="$W/pki" --tls-cert-file="$W/pki/apiserver.crt" --tls-private-key-file="$W/pki/apiserver.key" \
  --client-ca-file="$W/pki/ca.crt" \
  --authorization-mode=RBAC \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$W/pki/sa.pub" --service-account-signing-key-file="$W/pki/sa.key" \
  --service-cluster-ip-range=10.96.0.0/16 --endpoint-reconciler-type=none \
  --allow-privileged=true \
  --enable-priority-and-fairness=false --max-requests-inflight=0 --max-mutating-requests-inflight=0 \
  --profiling="${UP_PROFILING:-false}" "${apiserver_lean[@]}"
wait_until "kube-apiserver /readyz" kube-apiserver "${kubectl[@]}" get --raw=/readyz

# ---------------------------------------------------------------- kube-controller-manager
# Runs the default controllers: Deployment/ReplicaSet/Job, garbage collector, namespace
# deletion, ServiceAccount + kube-root-ca.crt publishers, node lifecycle (removes the
# not-ready taint). All of them use the admin identity (no --use-service-account-credentials).
# --kube-api-qps/burst: the default 20/30 client throttling slows down tests that create
#   many objects at once.
# --concurrent-{deployment,replicaset,job}-syncs: 5 workers each by default. A tier of
#   200 services starting at once queued behind them (the bench at 1,000 services: cluster
#   time per service beyond its readiness delay p99 3.7 s with 5 workers, 1.3-2.0 s with 50).
# --service-account-private-key-file: the legacy token-Secret controller, as on real clusters.
# --authentication-skip-lookup (also on the scheduler): do not read the requestheader CA
#   from kube-system/extension-apiserver-authentication; the apiserver has no front proxy, so
#   the lookup only fills the log with "missing content for CA bundle" errors. Their own
#   /healthz needs no authentication.
start kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig="$W/kubeconfig" \
  --authentication-kubeconfig="$W/kubeconfig" --authorization-kubeconfig="$W/kubeconfig" \
  --authentication-skip-lookup=true \
  --bind-address=127.0.0.1 --secure-port="$kcm_port" --leader-elect=false \
  --service-account-private-key-file="$W/pki/sa.key" --root-ca-file="$W/pki/ca.crt" \
  --cluster-signing-cert-file="$W/pki/ca.crt" --cluster-signing-key-file="$W/pki/ca.key" \
  --kube-api-qps=200 --kube-api-burst=400 \
  --concurrent-deployment-syncs=50 --concurrent-replicaset-syncs=50 --concurrent-job-syncs=50

# ---------------------------------------------------------------- kube-scheduler
cat > scheduler.yaml <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection: {kubeconfig: "$W/kubeconfig", qps: 200, burst: 400}
leaderElection: {leaderElect: false}
EOF
start kube-scheduler "$bin/kube-scheduler" --config="$W/scheduler.yaml" \
  --authentication-kubeconfig="$W/kubeconfig" --authorization-kubeconfig="$W/kubeconfig" \
  --authentication-skip-lookup=true \
  --bind-address=127.0.0.1 --secure-port="$sched_port"

# ---------------------------------------------------------------- kwok
# Only nodes annotated kwok.x-k8s.io/node=fake are kwok's; it fakes their kubelet: node
# Ready + lease heartbeat, pods Running/Ready, Job pods Succeeded, deletion.
# --node-lease-duration-seconds=40 is required: without it kwok v0.8.0 runs with 0 (its
#   documented default of 40 only applies through a KwokConfiguration), creates no Lease in
#   kube-node-lease, and the node lifecycle controller marks the node NotReady and taints it
#   unreachable after the 50 s grace period.
start kwok "$bin/kwok" --kubeconfig="$W/kubeconfig" --config="$bin/kwok-stages.yaml" \
  --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --node-lease-duration-seconds=40 --cidr=10.244.0.0/16 --node-ip=10.0.0.1

# ---------------------------------------------------------------- fake node
# No taint, so ordinary Deployments and Jobs schedule (kwok's docs add a NoSchedule one).
# TaintNodesByCondition adds node.kubernetes.io/not-ready until the node lifecycle
# controller sees it Ready, hence the wait below for Ready *and* no taints.
log "creating node kwok-node-0"
"${kubectl[@]}" create -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-0
  annotations: {node.alpha.kubernetes.io/ttl: "0", kwok.x-k8s.io/node: fake}
  labels: {kubernetes.io/hostname: kwok-node-0, kubernetes.io/os: linux, kubernetes.io/arch: amd64, type: kwok}
status:
  capacity:    {cpu: "32", memory: 256Gi, pods: "250"}
  allocatable: {cpu: "32", memory: 256Gi, pods: "250"}
  phase: Running
EOF

node_ready_untainted() {
  [ "$("${kubectl[@]}" get node kwok-node-0 \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}{.spec.taints}')" = True ]
}
wait_until "node kwok-node-0 Ready and untainted" kwok node_ready_untainted
wait_until "ServiceAccount default/default" kube-controller-manager \
  "${kubectl[@]}" -n default get serviceaccount default
wait_until "kube-scheduler /healthz" kube-scheduler http_ok "https://127.0.0.1:$sched_port/healthz"
wait_until "kube-controller-manager /healthz" kube-controller-manager http_ok "https://127.0.0.1:$kcm_port/healthz"
check_alive

cat > env <<EOF
export KUBECONFIG="$W/kubeconfig"
export PATH="$bin:\$PATH"
export RESURGO_K8S_BIN="$bin"
export RESURGO_CLUSTER_DIR="$W"
EOF
ok=1
log "ready in $((SECONDS - started_at))s: source $W/env; tear down with $here/down.sh $W"
echo "$W/env"
