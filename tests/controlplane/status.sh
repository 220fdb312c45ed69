#!/usr/bin/env bash
# Exits 0 when every process start.sh recorded is still alive.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/controlplane/env.sh
source "$here/env.sh"
[[ -f "$DP_CONTROLPLANE_DIR/pids" ]] || exit 1
while read -r name pid; do
    kill -0 "$pid" 2>/dev/null || { echo "$name ($pid) is not running" >&2; exit 1; }
done <"$DP_CONTROLPLANE_DIR/pids"
