#!/usr/bin/env bash
# The reference's images for the real-node tests, as its own Dockerfiles make them but on the project's Debian base
# (python:3.11-slim-bookworm, made locally by hack/image/build.sh) instead of distroless/Mariner, which cannot be
# pulled here:
#   azwi-webhook     /manager (cmd/webhook), user 65532
#   azwi-proxy       /proxy (cmd/proxy), user 1501
#   azwi-proxy-init  the reference's init/init-iptables.sh on Debian's iptables
# Binaries from hack/reference/build.sh. Each image is tagged with a content key (binaries, script, this file), so a
# rebuild happens only when one changes. The last line of stdout: the three image names, in that order.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "reference/images.sh: $*" >&2; }
BASE_IMAGE="docker.io/library/python:3.11-slim-bookworm"
REPO="${WI_REFERENCE_IMAGE_REPO:-localhost/wi-webhook-test}"
podman_cmd=(podman --runtime runc --cgroup-manager cgroupfs --events-backend file)
build_opts=(--pull=never --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

bin_dir="$(bash "$here/build.sh" | tail -n 1)"
"${podman_cmd[@]}" image exists "$BASE_IMAGE" \
  || { log "no $BASE_IMAGE: run hack/image/build.sh first (it makes the Debian base locally)"; exit 1; }
goproxy_dir="${WI_SHARED_GOPROXY:-$here/../../../shared/goproxy}"
export GOPROXY="$(go env GOPROXY | cut -d, -f1)|file://$(cd "$goproxy_dir" && pwd)" GONOSUMDB=monis.app/mlog
module="$(cd "$here" && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' github.com/Azure/azure-workload-identity)"
script="$module/init/init-iptables.sh"
[[ -f "$script" ]] || { log "no $script in the module cache"; exit 1; }

cache_dir="${WI_TEST_BIN_DIR:-$HOME/.cache/wi-webhook-test-bin}/images"
mkdir -p "$cache_dir"
exec 8>"$cache_dir/.image.lock"
flock -w 1200 8 || { log "timed out waiting for another image build"; exit 1; }

key="$(cat "$bin_dir/azwi-webhook" "$bin_dir/azwi-proxy" "$script" "${BASH_SOURCE[0]}" \
  <("${podman_cmd[@]}" image inspect --format '{{.Id}}' "$BASE_IMAGE") | sha256sum | cut -c1-16)"
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$bin_dir/azwi-webhook" "$bin_dir/azwi-proxy" "$script" "$context/"

build() {  # name, network, Containerfile text
  local image="$REPO/$1:v1.6.0-$key"
  if ! "${podman_cmd[@]}" image exists "$image"; then
    log "building $image ..."
    printf '%s\n' "$3" > "$context/Containerfile.$1"
    "${podman_cmd[@]}" build "${build_opts[@]}" --network "$2" --file "$context/Containerfile.$1" --tag "$image" \
      "$context" >&2
  fi
  images+=("$image")
}
images=()
build azwi-webhook none "FROM $BASE_IMAGE
COPY azwi-webhook /manager
USER 65532:65532
ENTRYPOINT [\"/manager\"]"
build azwi-proxy none "FROM $BASE_IMAGE
COPY azwi-proxy /proxy
USER 1501:1501
ENTRYPOINT [\"/proxy\"]"
# Debian's iptables from Debian's package archive (the one registry this needs).
build azwi-proxy-init host "FROM $BASE_IMAGE
RUN apt-get update && apt-get install -y --no-install-recommends iptables && rm -rf /var/lib/apt/lists/*
COPY init-iptables.sh /bin/init-iptables.sh
RUN chmod 0755 /bin/init-iptables.sh
USER 65532:65532
ENTRYPOINT [\"/bin/init-iptables.sh\"]"
echo "${images[*]}"
