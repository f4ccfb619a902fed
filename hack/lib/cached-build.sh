# The steps every hack/*/build.sh shares, sourced by them: a binary cached outside the repository in
# ${WI_TEST_BIN_DIR:-$HOME/.cache/wi-webhook-test-bin}/<name>-<version>/, returned at once when it is there, else built
# under a lock (two test sessions starting together build once). Progress goes to stderr; the last line of stdout
# is the bin dir. The sourcing script sets `build_name` and `bin_dir` and defines `built` (true when its binaries
# exist), then calls exit_if_built, take_build_lock and find_go, and builds.

log() { echo "${build_name}: $*" >&2; }

exit_if_built() {
  if built; then
    log "cached: $bin_dir"
    echo "$bin_dir"
    exit 0
  fi
}

take_build_lock() {  # [seconds to wait]
  mkdir -p "$bin_dir"
  exec 9>"$bin_dir/.build.lock"
  flock -w "${1:-1800}" 9 || { log "timed out waiting for another build (lock $bin_dir/.build.lock)"; exit 1; }
  if built; then
    log "built by a concurrent run: $bin_dir"
    echo "$bin_dir"
    exit 0
  fi
}

find_go() {  # sets go_bin
  go_bin="$(command -v go || true)"
  if [[ -z "$go_bin" && -x /usr/local/go/bin/go ]]; then
    go_bin=/usr/local/go/bin/go
  fi
  [[ -n "$go_bin" ]] || { log "no Go toolchain found (need go >= 1.26 on PATH or at /usr/local/go/bin/go)"; exit 1; }
}

require_pin() {  # module version go.mod: the version this script builds must be the one go.mod pins
  grep -q "$1 $2" "$3" || { log "$3 does not pin $1 $2"; exit 1; }
}
