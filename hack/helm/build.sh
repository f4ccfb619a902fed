#!/usr/bin/env bash
# Builds the helm command (helm.sh/helm/v4/cmd/helm) used by the tests, from the official Go module pinned in
# go.mod / go.sum beside this script (its `tool` line), with the version stamped the way helm's own Makefile
# does it (-X helm.sh/helm/v4/internal/version.version=...), so `helm version` prints it.
#
# The binary is cached outside the repo, in
#   ${WI_TEST_BIN_DIR:-$HOME/.cache/wi-webhook-test-bin}/helm-<version>/helm
# and the script exits at once when it exists. Progress goes to stderr; the last line of stdout is the bin dir.
# Go's module and build caches stay at their defaults.
set -euo pipefail

HELM_VERSION=v4.3.2   # must match the helm.sh/helm/v4 requirement in go.mod

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build_name=helm/build.sh
bin_dir="${WI_TEST_BIN_DIR:-$HOME/.cache/wi-webhook-test-bin}/helm-${HELM_VERSION}"
built() { [[ -x "$bin_dir/helm" ]]; }
source "$here/../lib/cached-build.sh"
exit_if_built
find_go
require_pin helm.sh/helm/v4 "$HELM_VERSION" "$here/go.mod"
take_build_lock

export CGO_ENABLED=0
export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath -buildvcs=false -mod=readonly"
"$go_bin" version >&2

# helm's Makefile: LDFLAGS := -w -s, plus -X .../internal/version.{version,metadata,gitCommit,gitTreeState};
# metadata stays empty as for a tagged release; the module proxy gives no commit, so gitCommit stays empty.
ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=${HELM_VERSION}"
ldflags+=" -X helm.sh/helm/v4/internal/version.gitTreeState=clean"

log "building helm ${HELM_VERSION} (cold: about 3 minutes) ..."
t0=$SECONDS
tmp="$(mktemp -d "$bin_dir/.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
(cd "$here" && "$go_bin" build -p 2 -ldflags="$ldflags" -o "$tmp/helm" helm.sh/helm/v4/cmd/helm)
mv -f "$tmp/helm" "$bin_dir/helm"
log "helm built in $((SECONDS - t0))s"

"$bin_dir/helm" version >&2
echo "$bin_dir"
