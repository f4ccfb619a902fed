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
build_name=registry/build.sh
bin_dir="${WI_TEST_BIN_DIR:-$HOME/.cache/wi-webhook-test-bin}/registry-${REGISTRY_VERSION}"
built() { [[ -x "$bin_dir/registry" ]]; }
source "$here/../lib/cached-build.sh"
exit_if_built
find_go
require_pin github.com/google/go-containerregistry "$REGISTRY_VERSION" "$here/go.mod"
take_build_lock

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
