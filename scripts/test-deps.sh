#!/usr/bin/env bash
# Installs the programs the integration tests (tests/) start: the upstream registry, the clients
# and the tools they need. Idempotent: installs only what is missing, and runs `apt-get update`
# only when it has something to install. Needs root (or sudo).
set -euo pipefail

# Debian package -> a file it provides (checked to decide whether it is installed).
declare -A PKGS=(
  [docker-registry]=/usr/bin/docker-registry   # CNCF distribution 2.8: the upstream registry
  [skopeo]=/usr/bin/skopeo                     # pushes seeds, pulls through the proxy
  [podman]=/usr/bin/podman                     # `podman pull` (vfs storage)
  [containerd]=/usr/bin/containerd             # containerd + ctr, hosts.toml mirror pulls
  [golang-github-containers-common]=/etc/containers/policy.json  # containers config (skopeo/podman dep)
  [crun]=/usr/bin/crun                         # OCI runtime podman insists on having
  [uidmap]=/usr/bin/newuidmap                  # podman's user-namespace helpers
  [tar]=/bin/tar
  [jq]=/usr/bin/jq
  [openssl]=/usr/bin/openssl                   # fast sha256 of the 1 GiB test layer
  [ca-certificates]=/etc/ssl/certs/ca-certificates.crt
  [curl]=/usr/bin/curl                         # conformance and control-plane scripts
  [etcd-server]=/usr/bin/etcd                  # the control plane's store (operator tests)
)

# PyPI: moto's S3-compatible server, the bucket behind the S3 storage suite (tests/tests/s3.rs).
if ! command -v moto_server >/dev/null 2>&1; then
  echo "test-deps: installing moto[server] from PyPI"
  python3 -m pip install --quiet 'moto[server]' \
    || python3 -m pip install --quiet --break-system-packages 'moto[server]'
  # pyenv puts new console scripts on PATH only after a rehash.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
  command -v moto_server >/dev/null 2>&1 || { echo "test-deps: moto_server is not on PATH after the install" >&2; exit 1; }
fi

missing=()
for pkg in "${!PKGS[@]}"; do
  if [ ! -e "${PKGS[$pkg]}" ] && ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "test-deps: everything is installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "test-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
