#!/usr/bin/env bash
# Prepares this machine for the real single-node cluster of tests/node (tests/node/realnode.py), idempotently:
#   1. Debian packages: containerd (+ runc), the CNI plugins (the bridge only makes the node Ready: every test pod
#      is hostNetwork), iptables (the kubelet's chains), podman (images), gcc + libc6-dev (the pause binary);
#   2. kubelet, kube-controller-manager and kube-scheduler built from the same k8s.io/kubernetes module and go.mod
#      as the test kube-apiserver (hack/test-apiserver/build.sh --node), into the same cache dir;
#   3. the pause image, compiled from kubernetes' own build/pause/linux/pause.c (static) and imported into podman
#      as localhost/wi-webhook-test/pause:<version> (no registry is reachable); the harness exports it to
#      containerd with the other images.
#   4. a check that the kernel has net.ipv4.tcp_migrate_req (Linux >= 5.14): the harness sets it to 1 while its
#      cluster runs and restores it after (tests/node/hoststate.py), as the chart README asks hostNetwork users to
#      do. It is not set here: this script runs before the harness records the host's baseline, and a value set
#      here would never be put back.
# Prints the bin dir last on stdout. Progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
hack="$(cd "$here/.." && pwd)"
log() { echo "test-node/prepare.sh: $*" >&2; }
PAUSE_IMAGE="localhost/wi-webhook-test/pause:3.10-local"
podman_cmd=(podman --runtime runc --cgroup-manager cgroupfs --events-backend file)

if [[ ! -e /proc/sys/net/ipv4/tcp_migrate_req ]]; then
  log "this kernel ($(uname -r)) has no net.ipv4.tcp_migrate_req (Linux >= 5.14 needed): the webhook's hand-off on an upgrade relies on it"
  exit 1
fi

"$hack/ensure-packages.sh" containerd runc containernetworking-plugins iptables podman gcc libc6-dev

bin_dir="$(bash "$hack/test-apiserver/build.sh" --node | tail -n 1)"

if ! "${podman_cmd[@]}" image exists "$PAUSE_IMAGE"; then
  go_bin="$(command -v go || echo /usr/local/go/bin/go)"
  k8s_dir="$(cd "$hack/test-apiserver" && GOTOOLCHAIN=local GOFLAGS=-mod=readonly "$go_bin" list -m -f '{{.Dir}}' k8s.io/kubernetes)"
  src="$k8s_dir/build/pause/linux/pause.c"
  [[ -f "$src" ]] || { log "pause.c not found at $src (the k8s.io/kubernetes module is incomplete)"; exit 1; }
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  mkdir "$work/rootfs"
  gcc -Os -Wall -Werror -static -DVERSION=v3.10-local -o "$work/rootfs/pause" "$src"
  tar -C "$work/rootfs" --owner=0 --group=0 -cf "$work/pause.tar" pause
  "${podman_cmd[@]}" import --change 'ENTRYPOINT ["/pause"]' --change 'USER 65535:65535' \
    "$work/pause.tar" "$PAUSE_IMAGE" >&2
  log "pause image: $PAUSE_IMAGE"
fi
echo "$bin_dir"
