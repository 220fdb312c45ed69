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

# Builds `packages` of the module in tools/$1 into $2, atomically: a half-finished build after an
# interrupted run must not look like a cached one.
build_module() {
    local module_dir="$1" dest="$2" ldflags="$3"
    shift 3
    local tmp="$dest.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    log "building $* into $dest"
    local start=$SECONDS
    (
        cd "$here/tools/$module_dir"
        # CGO off: static binaries, and no C toolchain surprises on a fresh machine.
        CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "-s -w $ldflags" -o "$tmp/" "$@"
    )
    rm -rf "$dest"
    mv "$tmp" "$dest"
    log "built $module_dir in $((SECONDS - start))s"
}

have_all() {
    local dir="$1"
    shift
    for bin in "$@"; do [[ -x "$dir/$bin" ]] || return 1; done
}

mkdir -p "$DP_TOOLS_DIR"

if ! have_all "$K8S_BIN" kube-apiserver kube-controller-manager kubectl; then
    # The version stamp matters: kubectl and the apiserver report it, and skew warnings use it.
    major="${K8S_VERSION#v}"; major="${major%%.*}"
    minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
    pkg=k8s.io/component-base/version
    build_module kubernetes "$K8S_BIN" \
        "-X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean" \
        k8s.io/kubernetes/cmd/kube-apiserver \
        k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kubectl
else
    log "kubernetes $K8S_VERSION: cached in $K8S_BIN"
fi

if ! have_all "$KWOK_BIN" kwok; then
    build_module kwok "$KWOK_BIN" "" sigs.k8s.io/kwok/cmd/kwok
else
    log "kwok $KWOK_VERSION: cached in $KWOK_BIN"
fi

if ! have_all "$HELM_BIN" helm; then
    build_module helm "$HELM_BIN" "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
        helm.sh/helm/v3/cmd/helm
else
    log "helm $HELM_VERSION: cached in $HELM_BIN"
fi

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
