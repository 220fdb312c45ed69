#!/usr/bin/env bash
# End-to-end on a kind cluster, for people with Docker (kind cannot run on the project's CI
# machines, which have no Docker engine; CI runs tests/controlplane/run-tests.sh instead).
#
# Needs: docker, kind, kubectl, helm. Run from anywhere:  tests/e2e/kind.sh
# It builds both images, loads them into a kind cluster, installs the chart, applies a
# DependencyProxy on MinIO object storage, pulls an image's manifest and blobs through it from a
# pod, scales it to 3 replicas, and pulls again. KEEP_CLUSTER=1 leaves the cluster running.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cluster="${KIND_CLUSTER:-dependency-proxy-e2e}"
ns=e2e
tag=e2e

log() { printf '\n==> %s\n' "$*"; }
for tool in docker kind kubectl helm; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

log "building images"
docker build --target proxy -t "dependency-proxy:$tag" "$root"
docker build --target operator -t "dependency-proxy-operator:$tag" "$root"

log "creating kind cluster $cluster"
kind get clusters | grep -qx "$cluster" || kind create cluster --name "$cluster" --wait 120s
if [[ "${KEEP_CLUSTER:-0}" != 1 ]]; then
    trap 'kind delete cluster --name "$cluster"' EXIT
fi
kind load docker-image --name "$cluster" "dependency-proxy:$tag" "dependency-proxy-operator:$tag"

log "installing the chart"
helm upgrade --install dpo "$root/charts/dependency-proxy-operator" \
    --namespace dp-system --create-namespace --wait \
    --set image.repository=dependency-proxy-operator --set image.tag="$tag" --set image.pullPolicy=Never \
    --set proxyImage.repository=dependency-proxy --set proxyImage.tag="$tag"
kubectl -n dp-system rollout status deployment/dpo-dependency-proxy-operator

log "object storage (MinIO) for a shared cache"
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$ns" create secret generic acme-s3-keys \
    --from-literal=AWS_ACCESS_KEY_ID=minioadmin --from-literal=AWS_SECRET_ACCESS_KEY=minioadmin \
    --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$ns" apply -f - <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: minio}
spec:
  selector: {matchLabels: {app: minio}}
  template:
    metadata: {labels: {app: minio}}
    spec:
      containers:
        - name: minio
          image: quay.io/minio/minio:latest
          command: ["sh", "-c", "mkdir -p /data/build-cache && minio server /data"]
          ports: [{containerPort: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: minio}
spec:
  selector: {app: minio}
  ports: [{port: 9000}]
YAML
kubectl -n "$ns" rollout status deployment/minio --timeout=180s

log "applying a DependencyProxy"
sed -e 's#http://minio.storage.svc:9000#http://minio.'"$ns"'.svc:9000#' -e 's/replicas: 3/replicas: 1/' \
    "$root/examples/dependencyproxy-s3.yaml" | awk '/^---/{exit} {print}' | kubectl -n "$ns" apply -f -
kubectl -n "$ns" wait dp/acme-s3 --for=condition=Ready --timeout=180s
kubectl -n "$ns" get dp
url="$(kubectl -n "$ns" get dp acme-s3 -o jsonpath='{.status.url}')"
echo "pull prefix: $url"

pull() {
    log "pulling alpine through $url ($1)"
    kubectl -n "$ns" delete pod puller --ignore-not-found --wait
    kubectl -n "$ns" run puller --restart=Never --image=quay.io/skopeo/stable:latest --command -- \
        skopeo copy --src-tls-verify=false "docker://$url/library/alpine:3.20" dir:/tmp/alpine
    kubectl -n "$ns" wait pod/puller --for=jsonpath='{.status.phase}'=Succeeded --timeout=180s
    kubectl -n "$ns" logs puller
}
pull "one replica"

log "scaling to 3"
kubectl -n "$ns" scale dp/acme-s3 --replicas=3
kubectl -n "$ns" wait dp/acme-s3 --for=jsonpath='{.status.readyReplicas}'=3 --timeout=180s
kubectl -n "$ns" get dp,deploy,pods
pull "three replicas"
log "e2e passed"
