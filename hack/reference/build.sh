#!/usr/bin/env bash
# Builds the reference webhook (Azure/azure-workload-identity v1.6.0), unmodified, from its Go module: cmd/webhook
# (the oracle of tests/e2e/test_reference_diff.py) and cmd/proxy. go.mod/go.sum beside this script pin it; its one
# dependency the module proxy refuses (monis.app/mlog) comes from the file proxy in ../shared/goproxy beside the
# repository (hash-checked against go.sum).
#
# Binaries are cached outside the repo, in
#   ${WI_TEST_BIN_DIR:-$HOME/.cache/wi-webhook-test-bin}/reference-v1.6.0-<recipe>/{azwi-webhook,azwi-proxy}
# and the script exits at once when both exist. Progress goes to stderr; the last line of stdout is the bin dir.
set -euo pipefail

REFERENCE_VERSION=v1.6.0  # must match the requirement in go.mod
RECIPE=2                  # part of the cache path: bump it when the build's flags change
# What the reference's own release build sets (its Makefile's LDFLAGS with REGISTRY and IMAGE_VERSION of v1.6.0):
# without them the webhook injects the proxy images as "/proxy:" and "/proxy-init:".
REGISTRY=mcr.microsoft.com/oss/azure/workload-identity
PKG=github.com/Azure/azure-workload-identity/pkg
LDFLAGS="-X $PKG/version.BuildVersion=$REFERENCE_VERSION -X $PKG/webhook.ProxyImageVersion=$REFERENCE_VERSION"
LDFLAGS+=" -X $PKG/webhook.ProxyImageRegistry=$REGISTRY"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin_dir="${WI_TEST_BIN_DIR:-$HOME/.cache/wi-webhook-test-bin}/reference-${REFERENCE_VERSION}-${RECIPE}"
build_name=reference/build.sh
built() { [[ -x "$bin_dir/azwi-webhook" && -x "$bin_dir/azwi-proxy" ]]; }
source "$here/../lib/cached-build.sh"
exit_if_built
require_pin github.com/Azure/azure-workload-identity "$REFERENCE_VERSION" "$here/go.mod"
goproxy_dir="${WI_SHARED_GOPROXY:-$root/../shared/goproxy}"
[[ -f "$goproxy_dir/monis.app/mlog/@v/v0.0.4.zip" ]] \
  || { log "no file proxy for monis.app/mlog at $goproxy_dir (set WI_SHARED_GOPROXY to shared/goproxy)"; exit 1; }
take_build_lock

upstream="$(go env GOPROXY | cut -d, -f1)"
export GOPROXY="${upstream}|file://$(cd "$goproxy_dir" && pwd)" GONOSUMDB=monis.app/mlog GOFLAGS=-mod=readonly
export CGO_ENABLED=0
log "building azwi-webhook and azwi-proxy ${REFERENCE_VERSION} (about 2 min with an empty module cache) ..."
cd "$here"
tmp="$(mktemp -d "$bin_dir/.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
go build -trimpath -ldflags "$LDFLAGS" -o "$tmp/azwi-webhook" github.com/Azure/azure-workload-identity/cmd/webhook
go build -trimpath -ldflags "$LDFLAGS" -o "$tmp/azwi-proxy" github.com/Azure/azure-workload-identity/cmd/proxy
mv "$tmp/azwi-webhook" "$tmp/azwi-proxy" "$bin_dir/"
log "built: $bin_dir"
echo "$bin_dir"
