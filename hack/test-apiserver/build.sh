#!/usr/bin/env bash
# Builds the kube-apiserver and etcd binaries used by the end-to-end tests (tests/e2e)
# from the official Go modules pinned in go.mod / etcd/go.mod beside this script.
# `build.sh --node` also builds kubelet, kube-controller-manager, kube-scheduler and kube-proxy from
# the same go.mod (its `tool` lines), for the real single-node cluster of tests/node (hack/test-node/).
#
# Binaries are cached outside the repo, in
#   ${WI_TEST_BIN_DIR:-$HOME/.cache/wi-webhook-test-bin}/<k8s-version>/{kube-apiserver,etcd,...}
# If they all exist the script exits at once. Progress goes to stderr; the last line of
# stdout is the bin dir. Go's module and build caches stay at their defaults.
set -euo pipefail

KUBE_VERSION=v1.37.2   # must match the k8s.io/kubernetes requirement in go.mod
ETCD_VERSION=v3.7.3    # must match the go.etcd.io/etcd/server/v3 requirement in etcd/go.mod

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin_dir="${WI_TEST_BIN_DIR:-$HOME/.cache/wi-webhook-test-bin}/${KUBE_VERSION}"

log() { echo "build.sh: $*" >&2; }

binaries=(kube-apiserver etcd)
case "${1:-}" in
  "") ;;
  --node) binaries+=(kubelet kube-controller-manager kube-scheduler kube-proxy) ;;
  *) log "unknown argument '$1' (usage: build.sh [--node])"; exit 2 ;;
esac
all_built() {
  local b
  for b in "${binaries[@]}"; do [[ -x "$bin_dir/$b" ]] || return 1; done
}

if all_built; then
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

grep -q "k8s.io/kubernetes ${KUBE_VERSION}" "$here/go.mod" \
  || { log "go.mod does not pin k8s.io/kubernetes ${KUBE_VERSION}"; exit 1; }
grep -q "go.etcd.io/etcd/server/v3 ${ETCD_VERSION}" "$here/etcd/go.mod" \
  || { log "etcd/go.mod does not pin go.etcd.io/etcd/server/v3 ${ETCD_VERSION}"; exit 1; }

mkdir -p "$bin_dir"

# One build at a time per bin dir (e.g. two test sessions starting together).
exec 9>"$bin_dir/.build.lock"
if command -v flock >/dev/null 2>&1; then
  flock -w 1800 9 || { log "timed out waiting for another build (lock $bin_dir/.build.lock)"; exit 1; }
  if all_built; then
    log "built by a concurrent run: $bin_dir"
    echo "$bin_dir"
    exit 0
  fi
fi

export CGO_ENABLED=0
export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath -buildvcs=false"
"$go_bin" version >&2

start=$SECONDS
major="${KUBE_VERSION#v}"; major="${major%%.*}"
minor="${KUBE_VERSION#v*.}"; minor="${minor%%.*}"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X ${pkg}.gitVersion=${KUBE_VERSION}"
  ldflags+=" -X ${pkg}.gitMajor=${major}"
  ldflags+=" -X ${pkg}.gitMinor=${minor}"
  ldflags+=" -X ${pkg}.gitTreeState=clean"
  ldflags+=" -X ${pkg}.buildDate=${build_date}"
done

if [[ ! -x "$bin_dir/kube-apiserver" ]]; then
  log "building kube-apiserver ${KUBE_VERSION} (cold: several minutes) ..."
  t0=$SECONDS
  (cd "$here" && "$go_bin" build -p 2 -tags=selinux,notest,grpcnotrace -ldflags="$ldflags" \
    -o "$bin_dir/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver)
  mv -f "$bin_dir/kube-apiserver.tmp" "$bin_dir/kube-apiserver"
  log "kube-apiserver built in $((SECONDS - t0))s"
fi

for component in "${binaries[@]:2}"; do
  [[ -x "$bin_dir/$component" ]] && continue
  log "building ${component} ${KUBE_VERSION} ..."
  t0=$SECONDS
  (cd "$here" && "$go_bin" build -p 2 -tags=selinux,notest,grpcnotrace -ldflags="$ldflags" \
    -o "$bin_dir/${component}.tmp" "k8s.io/kubernetes/cmd/${component}")
  mv -f "$bin_dir/${component}.tmp" "$bin_dir/${component}"
  log "${component} built in $((SECONDS - t0))s"
done

if [[ ! -x "$bin_dir/etcd" ]]; then
  log "building etcd ${ETCD_VERSION} ..."
  t0=$SECONDS
  (cd "$here/etcd" && "$go_bin" build -p 2 \
    -ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}" \
    -o "$bin_dir/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv -f "$bin_dir/etcd.tmp" "$bin_dir/etcd"
  log "etcd built in $((SECONDS - t0))s"
fi

"$bin_dir/kube-apiserver" --version >&2
"$bin_dir/etcd" --version >&2
for component in "${binaries[@]:2}"; do "$bin_dir/$component" --version >&2; done
log "build took $((SECONDS - start))s"
echo "$bin_dir"
