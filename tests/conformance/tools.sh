#!/usr/bin/env bash
# Builds the Go tools the conformance run uses, once, into a versioned folder outside the repo:
#   ${DP_TOOLS_DIR:-$HOME/.cache/dependency-proxy-tools}/oci-conformance-<version>/conformance.test
#   ${DP_TOOLS_DIR:-$HOME/.cache/dependency-proxy-tools}/crane-<version>/crane
# Idempotent: a tool whose binary exists is not rebuilt. Prints `NAME=PATH` lines for eval.
#
# The conformance module has no tagged releases of its own (the repository tags the spec, not
# the `conformance/` module), so the Go module proxy only serves pseudo-versions; we pin one.
set -euo pipefail

# Pinned versions: bump these on purpose, the folder name changes with them.
OCI_CONFORMANCE_MODULE=github.com/opencontainers/distribution-spec/conformance
OCI_CONFORMANCE_VERSION=${OCI_CONFORMANCE_VERSION:-v0.0.0-20260831232431-97274622c111}
CRANE_MODULE=github.com/google/go-containerregistry
CRANE_VERSION=${CRANE_VERSION:-v0.22.1}

tools_dir=${DP_TOOLS_DIR:-$HOME/.cache/dependency-proxy-tools}
# The suite is built with one local patch (suite-readonly-report.patch beside this script): in
# read-only mode this suite version cannot write its reports (an API left untested, such as range
# GETs, has status Unknown, which its YAML writer refuses, and it then writes no junit.xml or
# report.html; a skipped push group also dereferences a missing data entry). The patch touches
# report writing only, no test or verdict. Its hash is part of the folder name.
patch_file=$(cd "$(dirname "$0")" && pwd)/suite-readonly-report.patch
patch_id=$(sha256sum "$patch_file" | cut -c1-8)
conformance_dir=$tools_dir/oci-conformance-$OCI_CONFORMANCE_VERSION-p$patch_id
crane_dir=$tools_dir/crane-$CRANE_VERSION

log() { printf 'tools: %s\n' "$*" >&2; }

command -v go >/dev/null || { log "go is not installed"; exit 1; }
# Reproducible and offline-friendly: no VCS stamping, modules only through the module proxy.
export GOFLAGS="${GOFLAGS:-} -buildvcs=false -mod=mod"
export CGO_ENABLED=0

build_conformance() {
  local bin=$conformance_dir/conformance.test
  [[ -x $bin ]] && return
  log "building $OCI_CONFORMANCE_MODULE@$OCI_CONFORMANCE_VERSION"
  local start=$SECONDS src work
  src=$(go mod download -json "$OCI_CONFORMANCE_MODULE@$OCI_CONFORMANCE_VERSION" | jq -r .Dir)
  [[ -d $src ]] || { log "module download failed"; exit 1; }
  # The module cache is read-only; `go test -c` wants a writable module root.
  work=$(mktemp -d)
  cp -r "$src"/. "$work"/
  chmod -R u+w "$work"
  (cd "$work" && git apply --verbose "$patch_file")
  mkdir -p "$conformance_dir"
  (cd "$work" && go test -c -o "$conformance_dir/conformance.test.tmp" .)
  mv "$conformance_dir/conformance.test.tmp" "$bin"
  rm -rf "$work"
  log "built conformance.test in $((SECONDS - start)) s"
}

build_crane() {
  local bin=$crane_dir/crane
  [[ -x $bin ]] && return
  log "building crane $CRANE_VERSION"
  local start=$SECONDS
  mkdir -p "$crane_dir"
  GOBIN=$crane_dir go install "$CRANE_MODULE/cmd/crane@$CRANE_VERSION"
  log "built crane in $((SECONDS - start)) s"
}

build_conformance >&2
build_crane >&2
echo "CONFORMANCE_BIN=$conformance_dir/conformance.test"
echo "CRANE_BIN=$crane_dir/crane"
