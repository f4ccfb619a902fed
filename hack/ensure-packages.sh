#!/usr/bin/env bash
# Installs the Debian packages the real-node tests need (podman, runc, mmdebstrap, containerd, CNI plugins,
# iptables), only those missing: a second run does nothing. `apt-get update` runs once, and only when
# something is missing. Root is needed to install (CI and the test machines run as root).
#
#   hack/ensure-packages.sh podman runc mmdebstrap ...
set -euo pipefail

log() { echo "ensure-packages.sh: $*" >&2; }

missing=()
for pkg in "$@"; do
  status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
((${#missing[@]} == 0)) && exit 0

if [[ "$(id -u)" != 0 ]]; then
  log "missing Debian packages: ${missing[*]}; install them as root: apt-get install ${missing[*]}"
  exit 1
fi
log "installing ${missing[*]} ..."
export DEBIAN_FRONTEND=noninteractive
# Another apt run (e.g. a concurrent test session) holds the dpkg lock for a while: wait for it, bounded.
apt_opts=(-o DPkg::Lock::Timeout=600 -q)
apt-get "${apt_opts[@]}" update >&2
apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" >&2
