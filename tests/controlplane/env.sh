# Sourced by the control-plane scripts: tool versions (read from the pinned go.mod files), where
# their binaries are cached, and where a running control plane keeps its state.
# shellcheck shell=bash

_cp_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

_require_version() { awk -v m="$1" '$1 == "require" && $2 == m { print $3 }' "$2"; }

K8S_VERSION="$(_require_version k8s.io/kubernetes "$_cp_here/tools/kubernetes/go.mod")"
KWOK_VERSION="$(_require_version sigs.k8s.io/kwok "$_cp_here/tools/kwok/go.mod")"
HELM_VERSION="$(_require_version helm.sh/helm/v3 "$_cp_here/tools/helm/go.mod")"

DP_TOOLS_DIR="${DP_TOOLS_DIR:-$HOME/.cache/dependency-proxy-tools}"
K8S_BIN="$DP_TOOLS_DIR/kubernetes-$K8S_VERSION"
KWOK_BIN="$DP_TOOLS_DIR/kwok-$KWOK_VERSION"
HELM_BIN="$DP_TOOLS_DIR/helm-$HELM_VERSION"

# State of the running control plane: certs, etcd data, logs, pids, kubeconfigs.
DP_CONTROLPLANE_DIR="${DP_CONTROLPLANE_DIR:-/tmp/dependency-proxy-controlplane}"

export DP_TOOLS_DIR K8S_VERSION KWOK_VERSION HELM_VERSION K8S_BIN KWOK_BIN HELM_BIN DP_CONTROLPLANE_DIR
export PATH="$K8S_BIN:$KWOK_BIN:$HELM_BIN:$PATH"
