#!/usr/bin/env bash
# Starts a real Kubernetes control plane on loopback for the operator tests: etcd, kube-apiserver
# (client-certificate auth, RBAC authorization, service-account tokens), kube-controller-manager
# (garbage collection, Deployment -> ReplicaSet -> Pod, service accounts), kube-scheduler, and kwok
# simulating one node so that scheduled pods become Running and Ready without a container runtime.
#
# Prints the admin kubeconfig's path on its last line, and writes it to $DP_CONTROLPLANE_DIR/kubeconfig.
# Stop everything with stop.sh. Ports can be moved with DP_ETCD_PORT / DP_APISERVER_PORT.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/controlplane/env.sh
source "$here/env.sh"

log() { printf '[controlplane] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

ETCD_PORT="${DP_ETCD_PORT:-23790}"
ETCD_PEER_PORT="$((ETCD_PORT + 10))"
APISERVER_PORT="${DP_APISERVER_PORT:-26443}"
CM_PORT="${DP_CONTROLLER_MANAGER_PORT:-20257}"
SCHED_PORT="${DP_SCHEDULER_PORT:-20259}"
KWOK_PORT="${DP_KWOK_PORT:-20250}"
# Virtual ranges: Services and pods get addresses from them, but nothing ever connects to one
# (there is no kube-proxy and no container runtime); all real traffic stays on 127.0.0.1.
SERVICE_CIDR=10.96.0.0/24
POD_CIDR=10.244.0.0/24
NODE_NAME=kwok-node-0

for bin in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    [[ -x "$K8S_BIN/$bin" ]] || die "$bin missing: run tests/controlplane/build-tools.sh"
done
[[ -x "$KWOK_BIN/kwok" && -s "$KWOK_BIN/stages.yaml" ]] || die "kwok missing: run tests/controlplane/build-tools.sh"
command -v etcd >/dev/null || die "etcd missing: run tests/controlplane/build-tools.sh"

dir="$DP_CONTROLPLANE_DIR"
if [[ -f "$dir/pids" ]] && "$here/status.sh" >/dev/null 2>&1; then
    log "already running"
    echo "$dir/kubeconfig"
    exit 0
fi
"$here/stop.sh" >/dev/null 2>&1 || true
rm -rf "$dir"
mkdir -p "$dir"/{pki,logs,etcd}
# A half-started control plane is stopped again (logs are kept for the failure's diagnosis).
trap 'rc=$?; if ((rc != 0)); then DP_KEEP_CONTROLPLANE_STATE=1 "$here/stop.sh"; fi' EXIT
pki="$dir/pki"

# --- certificates -------------------------------------------------------------------------------
ossl() { openssl "$@" >/dev/null 2>&1; }
ossl req -x509 -new -nodes -newkey rsa:2048 -keyout "$pki/ca.key" -out "$pki/ca.crt" -days 7 \
    -subj "/CN=dependency-proxy-test-ca"

# client_cert NAME CN [O]
client_cert() {
    local name="$1" cn="$2" org="${3:-}"
    local subj="/CN=$cn"
    [[ -n "$org" ]] && subj="/O=$org/CN=$cn"
    ossl req -new -nodes -newkey rsa:2048 -keyout "$pki/$name.key" -out "$pki/$name.csr" -subj "$subj"
    printf 'extendedKeyUsage=clientAuth\n' >"$pki/$name.ext"
    ossl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
        -out "$pki/$name.crt" -days 7 -extfile "$pki/$name.ext"
}

ossl req -new -nodes -newkey rsa:2048 -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" -subj "/CN=kube-apiserver"
cat >"$pki/apiserver.ext" <<EOF
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
ossl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -out "$pki/apiserver.crt" -days 7 -extfile "$pki/apiserver.ext"
client_cert admin admin system:masters
client_cert controller-manager system:kube-controller-manager
client_cert scheduler system:kube-scheduler
client_cert kwok kwok system:masters
# Service-account token signing keys.
ossl genrsa -out "$pki/sa.key" 2048
ossl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub"

server="https://127.0.0.1:$APISERVER_PORT"
# kubeconfig NAME USER: one kubeconfig per component, with its client certificate.
kubeconfig() {
    local name="$1" user="$2" file="$dir/$1.kubeconfig"
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: $server
    certificate-authority: $pki/ca.crt
users:
- name: $user
  user:
    client-certificate: $pki/$name.crt
    client-key: $pki/$name.key
contexts:
- name: test
  context: {cluster: test, user: $user, namespace: default}
current-context: test
EOF
}
kubeconfig admin admin
kubeconfig controller-manager system:kube-controller-manager
kubeconfig scheduler system:kube-scheduler
kubeconfig kwok kwok
cp "$dir/admin.kubeconfig" "$dir/kubeconfig"

# --- processes ----------------------------------------------------------------------------------
: >"$dir/pids"
# start NAME CMD...: runs in the background in its own process group, logging to logs/NAME.log.
start() {
    local name="$1"
    shift
    setsid "$@" >"$dir/logs/$name.log" 2>&1 </dev/null &
    echo "$name $!" >>"$dir/pids"
}

# wait_for WHAT SECONDS CMD...
wait_for() {
    local what="$1" deadline=$((SECONDS + $2))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            log "timed out waiting for $what; last log lines:"
            tail -n 30 "$dir"/logs/*.log >&2 || true
            exit 1
        fi
        sleep 0.5
    done
}

start etcd etcd --name test --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "test=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync
wait_for etcd 30 curl -sf "http://127.0.0.1:$ETCD_PORT/health"

# OwnerReferencesPermissionEnforcement: setting blockOwnerDeletion on a child then needs
# `update` on the owner's finalizers, as on hardened clusters; the chart's RBAC grants it.
start kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --authorization-mode RBAC \
    --enable-admission-plugins OwnerReferencesPermissionEnforcement \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --endpoint-reconciler-type none \
    --allow-privileged=false --profiling=false \
    --cert-dir "$dir/pki/apiserver-generated"
wait_for kube-apiserver 120 curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$server/readyz"

start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig "$dir/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$dir/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$dir/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$CM_PORT" \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --use-service-account-credentials --leader-elect=false \
    --cluster-cidr "$POD_CIDR" --service-cluster-ip-range "$SERVICE_CIDR" \
    --concurrent-gc-syncs 5
start kube-scheduler "$K8S_BIN/kube-scheduler" \
    --kubeconfig "$dir/scheduler.kubeconfig" \
    --authentication-kubeconfig "$dir/scheduler.kubeconfig" \
    --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --leader-elect=false
start kwok "$KWOK_BIN/kwok" --kubeconfig "$dir/kwok.kubeconfig" --config "$KWOK_BIN/stages.yaml" \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --cidr "$POD_CIDR" --node-ip 127.0.0.1 --server-address "127.0.0.1:$KWOK_PORT"

export KUBECONFIG="$dir/kubeconfig"
# The fake node: kwok manages it (heartbeats, Ready) and its pods (Running, Ready).
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $NODE_NAME
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: $NODE_NAME
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
EOF
wait_for "node $NODE_NAME Ready" 60 kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=5s
# Pods need their namespace's default ServiceAccount, which the controller-manager creates.
wait_for "default ServiceAccount" 60 kubectl get serviceaccount default -n default
log "control plane up: apiserver $server, logs in $dir/logs"
echo "$dir/kubeconfig"
