#!/usr/bin/env bash
# Builds the control-plane test tools (kube-apiserver, kube-controller-manager, kubectl, kwok,
# helm) from their Go modules, and installs etcd from Debian, skipping whatever is already built.
#
# Binaries land in a folder per tool and version outside the repository, so a later run (or a
# second worktree) reuses them:  ${DP_TOOLS_DIR:-$HOME/.cache/dependency-proxy-tools}/<tool>-<ver>/
# The versions come from the go.mod files under tools/, which are the single source of truth.
#
# Idempotent: safe to run before every test run; a cached tool costs nothing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/controlplane/env.sh
source "$here/env.sh"

log() { printf '[build-tools] %s\n' "$*" >&2; }

# Builds the packages (command paths) of the module in tools/$1 whose binaries are missing from
# $2. Each binary is moved into place only once built, so an interrupted run never leaves a
# half-written binary that a later run would take for a cached one.
build_missing() {
    local module_dir="$1" dest="$2" ldflags="$3"
    shift 3
    local missing=()
    for pkg in "$@"; do [[ -x "$dest/${pkg##*/}" ]] || missing+=("$pkg"); done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "$module_dir: cached in $dest"
        return
    fi
    local tmp="$dest.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp" "$dest"
    log "building ${missing[*]} into $dest"
    local start=$SECONDS
    (
        cd "$here/tools/$module_dir"
        # CGO off: static binaries, and no C toolchain surprises on a fresh machine.
        CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "-s -w $ldflags" -o "$tmp/" "${missing[@]}"
    )
    mv "$tmp"/* "$dest/"
    rm -rf "$tmp"
    log "built $module_dir in $((SECONDS - start))s"
}

mkdir -p "$DP_TOOLS_DIR"

# The version stamp matters: kubectl and the apiserver report it, and skew warnings use it.
major="${K8S_VERSION#v}"; major="${major%%.*}"
minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
vpkg=k8s.io/component-base/version
# kube-scheduler binds the Deployments' pods to the kwok node; kwok itself does not schedule.
build_missing kubernetes "$K8S_BIN" \
    "-X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=$major -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl

build_missing kwok "$KWOK_BIN" "" sigs.k8s.io/kwok/cmd/kwok
# kwok does nothing without stages (the lifecycle rules it applies). Its module ships the standard
# "fast" ones; keep them beside the binary of the same version.
if [[ ! -s "$KWOK_BIN/stages.yaml" ]]; then
    stages="$(cd "$here/tools/kwok" && go list -mod=mod -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage"
    for f in node/fast/node-initialize.yaml node/heartbeat/node-heartbeat.yaml \
        pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
        cat "$stages/$f"
        echo "---"
    done >"$KWOK_BIN/stages.yaml.tmp"
    mv "$KWOK_BIN/stages.yaml.tmp" "$KWOK_BIN/stages.yaml"
    log "kwok stages written to $KWOK_BIN/stages.yaml"
fi

build_missing helm "$HELM_BIN" "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    helm.sh/helm/v3/cmd/helm

if ! command -v etcd >/dev/null && [[ ! -x /usr/bin/etcd ]]; then
    log "installing etcd from Debian (etcd-server)"
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
    fi
fi
# Debian's unit would start a system etcd on the same default ports; the tests run their own.
if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
    log "note: a system etcd is running; the test etcd uses its own ports"
fi
log "etcd: $(etcd --version 2>/dev/null | head -1)"
log "tools ready in $DP_TOOLS_DIR"
