#!/usr/bin/env bash
# The operator's control-plane tests, start to finish: builds the tools if missing, starts the
# loopback control plane, runs the operator's unit and control-plane tests, and stops everything
# (also on failure or interrupt). Exits non-zero when any test fails.
#
# Optional: DEPENDENCY_PROXY_BIN and DP_TEST_UPSTREAM_URL (and DP_TEST_IMAGE=repo:tag) enable the
# test that starts the real proxy binary from the operator's ConfigMap.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=tests/controlplane/env.sh
source "$here/env.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

start=$SECONDS
"$here/build-tools.sh"
echo "[run-tests] tools ready after $((SECONDS - start))s" >&2

trap '"$here/stop.sh"' EXIT INT TERM
KUBECONFIG="$("$here/start.sh" | tail -n 1)"
export KUBECONFIG

cd "$root"
# Unit tests (builders, CRD staleness, tower-test error paths), then the control-plane suite.
cargo test -p dependency-proxy-operator --lib --bins --test mock_api
cargo test -p dependency-proxy-operator --test controlplane -- --ignored --test-threads="${DP_TEST_THREADS:-4}"
echo "[run-tests] done after $((SECONDS - start))s" >&2
