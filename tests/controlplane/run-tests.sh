#!/usr/bin/env bash
# The operator's control-plane tests, start to finish: builds the tools if missing, starts the
# loopback control plane, runs the operator's unit and control-plane tests, and stops everything
# (also on failure or interrupt). Exits non-zero when any test fails.
#
# DEPENDENCY_PROXY_BIN (the proxy binary) enables the test that starts the real proxy from the
# operator's ConfigMap and pulls through it; its upstream is DP_TEST_UPSTREAM_URL, or else a
# Debian docker-registry this script starts on loopback (apt package docker-registry).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=tests/controlplane/env.sh
source "$here/env.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

start=$SECONDS
"$here/build-tools.sh"
echo "[run-tests] tools ready after $((SECONDS - start))s" >&2

registry_pid=""
cleanup() {
    [[ -n "$registry_pid" ]] && kill "$registry_pid" 2>/dev/null
    "$here/stop.sh"
}
trap cleanup EXIT INT TERM
KUBECONFIG="$("$here/start.sh" | tail -n 1)"
export KUBECONFIG

if [[ -n "${DEPENDENCY_PROXY_BIN:-}" && -z "${DP_TEST_UPSTREAM_URL:-}" ]]; then
    command -v docker-registry >/dev/null || { echo "[run-tests] DEPENDENCY_PROXY_BIN is set: install docker-registry (apt) or set DP_TEST_UPSTREAM_URL" >&2; exit 1; }
    port="${DP_TEST_REGISTRY_PORT:-25001}"
    reg_dir="$DP_CONTROLPLANE_DIR/registry"
    mkdir -p "$reg_dir/data"
    printf 'version: 0.1\nlog: {level: warn}\nstorage:\n  filesystem: {rootdirectory: %s}\nhttp: {addr: "127.0.0.1:%s", secret: operator-tests}\n' \
        "$reg_dir/data" "$port" >"$reg_dir/config.yml"
    docker-registry serve "$reg_dir/config.yml" >"$DP_CONTROLPLANE_DIR/logs/registry.log" 2>&1 &
    registry_pid=$!
    for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.2; done
    export DP_TEST_UPSTREAM_URL="http://127.0.0.1:$port"
    echo "[run-tests] upstream registry for the proxy test: $DP_TEST_UPSTREAM_URL" >&2
fi

cd "$root"
# Unit tests (builders, CRD staleness, tower-test error paths), then the control-plane suite.
cargo test -p dependency-proxy-operator --lib --bins --test mock_api
cargo test -p dependency-proxy-operator --test controlplane -- --ignored --test-threads="${DP_TEST_THREADS:-4}"
echo "[run-tests] done after $((SECONDS - start))s" >&2
