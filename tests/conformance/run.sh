#!/usr/bin/env bash
# OCI distribution-spec conformance (pull workflow) against the proxy, plus crane as a real client.
#
#   tests/conformance/run.sh
#
# What it does, all on 127.0.0.1:
#   1. builds the pinned conformance suite and crane if missing (tests/conformance/tools.sh);
#   2. starts an upstream `docker-registry` (CNCF distribution) and seeds it from an OCI layout
#      written here: an image index (tag `index`) over an image manifest (tag `image`) with a
#      gzip layer, an uncompressed layer and a config;
#   3. runs the suite read-only (the proxy has no push API, so the suite cannot create its own
#      content) against the proxy's GitLab names, cold cache, warm, and warm after a restart;
#      then against the mirror names with a fresh cache, cold and warm;
#   4. checks through a fresh proxy, cold and warm: `crane digest`, `crane manifest` and
#      `crane pull --format oci` give the upstream's digests and bytes; plus blob bodies and a
#      Range request with curl.
# Reports (report.html, junit.xml, results.yaml, the suite's stdout) go to
# ${CONFORMANCE_OUT:-target/conformance}/<run>/, never into the tree. Exits non-zero on any failure.
#
# Environment: DEPENDENCY_PROXY_BIN (default: build target/debug/dependency-proxy),
# DP_TOOLS_DIR (tool cache, see tools.sh), CONFORMANCE_OUT, KEEP_WORKDIR=1 (keep logs and storage).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo_root=$PWD

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'conformance: FAIL: %s\n' "$*" >&2; exit 1; }

# --- packages (idempotent: only what is missing) ------------------------------------------------
declare -A PKGS=([docker-registry]=/usr/bin/docker-registry [jq]=/usr/bin/jq [curl]=/usr/bin/curl
  [python3]=/usr/bin/python3)
missing=()
for pkg in "${!PKGS[@]}"; do [[ -e ${PKGS[$pkg]} ]] || missing+=("$pkg"); done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

log "tools"
eval "$(tests/conformance/tools.sh)"
crane() { "$CRANE_BIN" --insecure "$@"; }

if [[ -z ${DEPENDENCY_PROXY_BIN:-} ]]; then
  log "building the proxy (debug)"
  cargo build -p dependency-proxy --locked
  DEPENDENCY_PROXY_BIN=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/debug/dependency-proxy
fi
[[ -x $DEPENDENCY_PROXY_BIN ]] || die "no proxy binary at $DEPENDENCY_PROXY_BIN"

out=${CONFORMANCE_OUT:-$repo_root/target/conformance}
rm -rf "$out"
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/dp-conformance.XXXXXX")
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ ${KEEP_WORKDIR:-0} == 1 ]]; then echo "work dir kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() { # url seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  return 1
}

# --- upstream registry --------------------------------------------------------------------------
up_port=$(free_port)
upstream=127.0.0.1:$up_port
mkdir -p "$work/upstream"
cat >"$work/upstream/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $work/upstream/data
  delete:
    enabled: true
http:
  addr: $upstream
EOF
log "upstream docker-registry on $upstream"
docker-registry serve "$work/upstream/config.yml" >"$work/upstream/registry.log" 2>&1 &
pids+=($!)
wait_http "http://$upstream/v2/" 20 || die "upstream registry did not start (see $work/upstream/registry.log)"

# --- seed content: an OCI layout written byte by byte, so every digest is known here ------------
layout=$work/layout
mkdir -p "$layout/blobs/sha256"
add_blob() { # file -> "digest size", file moved into the layout
  local hex size
  hex=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  mv "$1" "$layout/blobs/sha256/$hex"
  echo "sha256:$hex $size"
}
mkdir -p "$work/rootfs1/etc" "$work/rootfs2/data"
echo "dependency-proxy conformance $(date -u +%FT%TZ)" >"$work/rootfs1/etc/motd"
head -c 65536 /dev/urandom >"$work/rootfs1/etc/random.bin"
head -c $((3 * 1024 * 1024 + 17)) /dev/urandom >"$work/rootfs2/data/big.bin"
tar -C "$work/rootfs1" -cf "$work/layer1.tar" .
diff1=sha256:$(sha256sum "$work/layer1.tar" | cut -d' ' -f1)
gzip -n -c "$work/layer1.tar" >"$work/layer1.tar.gz"
tar -C "$work/rootfs2" -cf "$work/layer2.tar" .
diff2=sha256:$(sha256sum "$work/layer2.tar" | cut -d' ' -f1)
read -r layer1 layer1_size < <(add_blob "$work/layer1.tar.gz")
read -r layer2 layer2_size < <(add_blob "$work/layer2.tar")
printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/true"]},"rootfs":{"type":"layers","diff_ids":["%s","%s"]}}' \
  "$diff1" "$diff2" >"$work/config.json"
read -r config config_size < <(add_blob "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%d},{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%d}],"annotations":{"org.opencontainers.image.title":"dependency-proxy conformance"}}' \
  "$config" "$config_size" "$layer1" "$layer1_size" "$layer2" "$layer2_size" >"$work/manifest.json"
read -r manifest manifest_size < <(add_blob "$work/manifest.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%d,"platform":{"architecture":"amd64","os":"linux"}}]}' \
  "$manifest" "$manifest_size" >"$work/index.json"
read -r index index_size < <(add_blob "$work/index.json")
echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"%s","size":%d}]}' \
  "$index" "$index_size" >"$layout/index.json"
blobs=("$config" "$layer1" "$layer2")

# Single-component upstream name: the proxy maps `conformance` to `library/conformance`.
up_repo=$upstream/library/conformance
log "seeding $up_repo"
pushed=$(crane push "$layout" "$up_repo:index")
[[ $pushed == "$up_repo@$index" ]] || die "crane push printed $pushed, expected $up_repo@$index"
crane tag "$up_repo@$manifest" image
[[ $(crane digest "$up_repo:index") == "$index" ]] || die "upstream index digest"
[[ $(crane digest "$up_repo:image") == "$manifest" ]] || die "upstream image digest"
printf '  index     %s\n  manifest  %s\n  config    %s\n  layers    %s %s\n' \
  "$index" "$manifest" "$config" "$layer1" "$layer2"

# --- the proxy ----------------------------------------------------------------------------------
group=conformance
proxy_addr=""
start_proxy() { # name storage-dir
  local port
  port=$(free_port)
  proxy_addr=127.0.0.1:$port
  mkdir -p "$2/cache" "$2/spool"
  "$DEPENDENCY_PROXY_BIN" --listen "$proxy_addr" --upstream "http://$upstream" \
    --storage "file://$2/cache" --spool-dir "$2/spool" --group "$group" \
    --official-images-prefix library --mirror --manifest-freshness 0s --log-format text \
    >>"$2/proxy.log" 2>&1 &
  proxy_pid=$!
  pids+=("$proxy_pid")
  wait_http "http://$proxy_addr/readyz" 20 || die "proxy $1 did not become ready (see $2/proxy.log)"
  echo "proxy $1 on $proxy_addr (pid $proxy_pid)"
}
stop_proxy() {
  kill "$proxy_pid" 2>/dev/null || true
  wait "$proxy_pid" 2>/dev/null || true
}

# --- the suite ----------------------------------------------------------------------------------
failures=()
suite_summary=()
run_suite() { # run-name repository
  local name=$1 repository=$2 dir=$out/$1 rc=0 status passed failed errored skipped disabled
  mkdir -p "$dir"
  log "conformance $name: $proxy_addr/v2/$repository"
  # The suite's current config names (the legacy OCI_ROOT_URL/OCI_NAMESPACE/OCI_TEST_PULL/
  # OCI_TAG_NAME/OCI_MANIFEST_DIGEST/OCI_BLOB_DIGEST map onto these). Push, tag listing,
  # referrers and deletes are disabled: the proxy serves the read-only pull API only.
  (
    cd "$dir"
    env OCI_REGISTRY="$proxy_addr" OCI_TLS=disabled OCI_REPO1="$repository" OCI_REPO2="$repository" \
      OCI_API_PING=true OCI_API_PULL=true OCI_API_PUSH=false OCI_API_REFERRER=false \
      OCI_API_TAGS_LIST=false OCI_API_TAGS_DELETE=false OCI_API_MANIFESTS_DELETE=false \
      OCI_API_BLOBS_DELETE=false \
      OCI_RO_DATA_TAGS="index image" OCI_RO_DATA_MANIFESTS="$index $manifest" \
      OCI_RO_DATA_BLOBS="${blobs[*]}" OCI_RESULTS_DIR="$dir" OCI_LOG=warn \
      "$CONFORMANCE_BIN" -test.v >"$dir/suite.log" 2>&1
  ) || rc=$?
  # The suite exits 0 when it cannot load its configuration or write a report, so the verdict is
  # read from its summary and the reports' presence as well as from the exit code.
  status=$(sed -n 's/^OCI Conformance Result: //p' "$dir/suite.log")
  passed=$(sed -n 's/^  Pass\.*: *//p' "$dir/suite.log")
  failed=$(sed -n 's/^  FAIL\.*: *//p' "$dir/suite.log")
  errored=$(sed -n 's/^  Error\.*: *//p' "$dir/suite.log")
  skipped=$(sed -n 's/^  Skip\.*: *//p' "$dir/suite.log")
  disabled=$(sed -n 's/^  Disabled\.*: *//p' "$dir/suite.log")
  suite_summary+=("$(printf '%-22s %-5s exit %d: %s passed, %s failed, %s errors, %s skipped, %s disabled' \
    "$name" "${status:-?}" "$rc" "${passed:-?}" "${failed:-?}" "${errored:-?}" "${skipped:-?}" "${disabled:-?}")")
  echo "${suite_summary[-1]}"
  if [[ $rc -ne 0 || $status != Pass || ${passed:-0} -eq 0 || ${failed:-1} -ne 0 || ${errored:-1} -ne 0 ]] ||
    [[ ! -s $dir/junit.xml || ! -s $dir/report.html ]]; then
    sed -n '/^Test results/,/^Configuration:/p' "$dir/suite.log" | grep -v ': Disabled$'
    grep -E '^failed|panic' "$dir/suite.log" || true
    failures+=("conformance $name (see $dir)")
  fi
}

# --- crane and curl through the proxy -----------------------------------------------------------
check_clients() { # label repository-under-proxy
  local label=$1 ref=$proxy_addr/$2 url=http://$proxy_addr/v2/$2 got dir
  log "crane $label: $ref"
  got=$(crane digest "$ref:index") || got="error"
  [[ $got == "$index" ]] || { failures+=("crane digest $label :index: got $got, want $index"); }
  got=$(crane digest "$ref:image") || got="error"
  [[ $got == "$manifest" ]] || { failures+=("crane digest $label :image: got $got, want $manifest"); }
  got=$(crane manifest "$ref:image" | sha256sum | cut -d' ' -f1) || got="error"
  [[ sha256:$got == "$manifest" ]] || failures+=("crane manifest $label :image: bytes hash to sha256:$got")
  got=$(crane manifest "$ref@$index" | sha256sum | cut -d' ' -f1) || got="error"
  [[ sha256:$got == "$index" ]] || failures+=("crane manifest $label @index: bytes hash to sha256:$got")
  dir=$work/pulled-$label
  rm -rf "$dir"
  if crane pull --format oci "$ref:index" "$dir"; then
    local d
    for d in "$index" "$manifest" "${blobs[@]}"; do
      if [[ ! -f $dir/blobs/sha256/${d#sha256:} ]]; then
        failures+=("crane pull $label: $d missing from the pulled layout")
      elif [[ $(sha256sum "$dir/blobs/sha256/${d#sha256:}" | cut -d' ' -f1) != "${d#sha256:}" ]]; then
        failures+=("crane pull $label: $d has wrong bytes")
      fi
    done
  else
    failures+=("crane pull $label failed")
  fi
  # Bodies and a Range request, byte-exact against the layout.
  local b hex
  for b in "${blobs[@]}"; do
    hex=${b#sha256:}
    got=$(curl -fsS "$url/blobs/$b" | sha256sum | cut -d' ' -f1) || got=error
    [[ $got == "$hex" ]] || failures+=("GET blob $label $b: body hashes to $got")
  done
  got=$(curl -fsS -o "$work/range.bin" -w '%{http_code}' -H 'Range: bytes=100-1123' "$url/blobs/$layer2") || got=error
  if [[ $got != 206 ]] || ! cmp -s "$work/range.bin" <(tail -c +101 "$layout/blobs/sha256/${layer2#sha256:}" | head -c 1024); then
    failures+=("GET blob $label $layer2 Range bytes=100-1123: status $got or wrong bytes")
  fi
  echo "crane/curl $label: done"
}

# 1. GitLab names, one cache: cold, warm, warm after a restart (the cache is on disk).
start_proxy group "$work/proxy-group"
run_suite group-cold "$group/dependency_proxy/containers/conformance"
run_suite group-warm "$group/dependency_proxy/containers/conformance"
stop_proxy
start_proxy group-restarted "$work/proxy-group"
run_suite group-warm-restarted "$group/dependency_proxy/containers/conformance"
stop_proxy

# 2. Mirror names, a fresh cache: cold and warm.
start_proxy mirror "$work/proxy-mirror"
run_suite mirror-cold conformance
run_suite mirror-warm conformance
stop_proxy

# 3. crane and curl, a fresh cache: cold, then warm; GitLab names then mirror names.
start_proxy clients "$work/proxy-clients"
check_clients cold "$group/dependency_proxy/containers/conformance"
check_clients warm "$group/dependency_proxy/containers/conformance"
check_clients mirror-warm conformance
stop_proxy

for f in "$work"/proxy-*/proxy.log; do cp "$f" "$out/$(basename "$(dirname "$f")").log"; done
cp "$work/upstream/registry.log" "$out/upstream-registry.log"

log "summary (reports in $out)"
printf '  %s\n' "${suite_summary[@]}"
if ((${#failures[@]})); then
  printf '  FAILED: %s\n' "${failures[@]}"
  exit 1
fi
echo "  all conformance runs and client checks passed"
