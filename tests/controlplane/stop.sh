#!/usr/bin/env bash
# Stops the control plane start.sh started (only the processes it recorded), and removes its state
# unless DP_KEEP_CONTROLPLANE_STATE=1 (to read the logs after a failure).
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/controlplane/env.sh
source "$here/env.sh"
dir="$DP_CONTROLPLANE_DIR"
[[ -f "$dir/pids" ]] || exit 0

# Reverse start order: kwok and the controllers before the apiserver, etcd last.
tac "$dir/pids" | while read -r name pid; do
    if kill -0 "$pid" 2>/dev/null; then
        # Each component runs in its own process group (setsid), so this ends it and nothing else.
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    echo "[controlplane] stopped $name" >&2
done
rm -f "$dir/pids"
if [[ "${DP_KEEP_CONTROLPLANE_STATE:-0}" != 1 ]]; then
    rm -rf "$dir"
fi
