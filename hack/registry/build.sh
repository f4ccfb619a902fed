#!/usr/bin/env bash
# Builds the OCI registry used by the tests: go-containerregistry's cmd/registry, from the official Go module
# pinned in go.mod / go.sum beside this script (its `tool` line). It is a plain-HTTP registry that keeps every
# blob and manifest in memory (lost when it stops); it listens on localhost:<-port> (default 1338; -port 0
# picks a free one and logs "serving on port N" on stderr). It has no other flags and no version flag.
#
# The binary is cached outside the repo, in
#   ${WI_TEST_BIN_DIR:-$HOME/.cache/wi-webhook-test-bin}/registry-<version>/registry
# and the script exits at once when it exists. Progress goes to stderr; the last line of stdout is the bin dir.
# Go's module and build caches stay at their defaults.
set -euo pipefail

REGISTRY_VERSION=v0.22.1  # must match the github.com/google/go-containerregistry requirement in go.mod

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin_dir="${WI_TEST_BIN_DIR:-$HOME/.cache/wi-webhook-test-bin}/registry-${REGISTRY_VERSION}"

log() { echo "registry/build.sh: $*" >&2; }

built() { [[ -x "$bin_dir/registry" ]]; }
if built; then
  log "cached: $bin_dir"
  echo "$bin_dir"
  exit 0
fi

go_bin="$(command -v go || true)"
if [[ -z "$go_bin" && -x /usr/local/go/bin/go ]]; then
  go_bin=/usr/local/go/bin/go
fi
if [[ -z "$go_bin" ]]; then
  log "no Go toolchain found (need go >= 1.26 on PATH or at /usr/local/go/bin/go)"
  exit 1
fi

grep -q "github.com/google/go-containerregistry ${REGISTRY_VERSION}" "$here/go.mod" \
  || { log "go.mod does not pin github.com/google/go-containerregistry ${REGISTRY_VERSION}"; exit 1; }

mkdir -p "$bin_dir"

# One build at a time per bin dir (e.g. two test sessions starting together).
exec 9>"$bin_dir/.build.lock"
if command -v flock >/dev/null 2>&1; then
  flock -w 1800 9 || { log "timed out waiting for another build (lock $bin_dir/.build.lock)"; exit 1; }
  if built; then
    log "built by a concurrent run: $bin_dir"
    echo "$bin_dir"
    exit 0
  fi
fi

export CGO_ENABLED=0
export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath -buildvcs=false -mod=readonly"
"$go_bin" version >&2

log "building registry ${REGISTRY_VERSION} ..."
t0=$SECONDS
tmp="$(mktemp -d "$bin_dir/.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
(cd "$here" && "$go_bin" build -p 2 -ldflags="-s -w" -o "$tmp/registry" \
  github.com/google/go-containerregistry/cmd/registry)
mv -f "$tmp/registry" "$bin_dir/registry"
log "registry built in $((SECONDS - t0))s"
echo "$bin_dir"
