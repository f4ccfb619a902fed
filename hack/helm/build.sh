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
bin_dir="${WI_TEST_BIN_DIR:-$HOME/.cache/wi-webhook-test-bin}/helm-${HELM_VERSION}"

log() { echo "helm/build.sh: $*" >&2; }

built() { [[ -x "$bin_dir/helm" ]]; }
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

grep -q "helm.sh/helm/v4 ${HELM_VERSION}" "$here/go.mod" \
  || { log "go.mod does not pin helm.sh/helm/v4 ${HELM_VERSION}"; exit 1; }

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
