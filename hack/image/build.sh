#!/usr/bin/env bash
# Builds the project's container image from the real Dockerfile with podman, on a machine that reaches no
# container registry (only Debian's and PyPI), for the tests that run it (tests/node).
#
#   hack/image/build.sh            # prints the image name last on stdout, e.g. localhost/workload-identity-webhook:test-1a2b..
#
# 1. Installs what is missing (podman, runc, mmdebstrap) with hack/ensure-packages.sh.
# 2. The Dockerfile's base (python:3.11-slim-bookworm) cannot be pulled, so an equivalent is made locally, once:
#    `mmdebstrap --variant=minbase` of Debian bookworm with python3 + pip (Debian's python3 is 3.11, as the official
#    image's) → `podman import`, with what the official image has and Debian lacks: `python`/`pip` on
#    /usr/local/bin and no EXTERNALLY-MANAGED marker; plus this machine's CA bundle and PIP_CERT, since the package
#    index is reached through it. It is tagged as the Dockerfile's FROM and labelled io.wi-webhook.local-base, so a
#    real image of that name (where a registry is reachable) is used as it is and never replaced.
# 3. `podman build --pull=never` of the Dockerfile, unchanged. The image is tagged with a content key (the
#    Dockerfile, .dockerignore, the sources it copies, the base image's id): a second run with nothing changed
#    only checks the key (seconds).
#
# Podman runs here only with `--runtime runc` and explicit ulimits (crun fails on this VM's cgroups; root lacks
# CAP_SYS_RESOURCE) and with cgroupfs (no systemd as PID 1). The image is kept in podman's store; the OCI archive
# for containerd is written next to the binaries' cache by hack/test-node (podman save).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
log() { echo "image/build.sh: $*" >&2; }

IMAGE_REPO="${WI_IMAGE_REPO:-localhost/workload-identity-webhook}"
BASE_IMAGE="docker.io/library/python:3.11-slim-bookworm"   # the Dockerfile's FROM, fully qualified
BASE_LABEL="io.wi-webhook.local-base"
# The files the Dockerfile's build stage copies (tests/test_image.py checks this list against its COPY lines).
KEY_SOURCES=(Dockerfile .dockerignore pyproject.toml README.md webhook)

podman_cmd=(podman --runtime runc --cgroup-manager cgroupfs --events-backend file)
run_opts=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

"$here/../ensure-packages.sh" podman runc mmdebstrap

cache_dir="${WI_TEST_BIN_DIR:-$HOME/.cache/wi-webhook-test-bin}/images"
mkdir -p "$cache_dir"
# One image build at a time on this machine (two test sessions starting together share podman's store).
exec 8>"$cache_dir/.image.lock"
flock -w 1200 8 || { log "timed out waiting for another image build (lock $cache_dir/.image.lock)"; exit 1; }

# ---- 2. the base image ----
ca_bundle=/etc/ssl/certs/ca-certificates.crt
base_key="$( { echo "bookworm minbase python3 python3-pip python3-venv ca-certificates v1"; cat "$ca_bundle"; } \
  | sha256sum | cut -c1-16)"
if "${podman_cmd[@]}" image exists "$BASE_IMAGE"; then
  have="$("${podman_cmd[@]}" image inspect --format "{{index .Labels \"$BASE_LABEL\"}}" "$BASE_IMAGE" || true)"
  if [[ -n "$have" && "$have" != "<no value>" && "$have" != "$base_key" ]]; then
    log "local base $BASE_IMAGE is stale ($have != $base_key): rebuilding it"
    need_base=1
  else
    need_base=0
  fi
else
  need_base=1
fi
if ((need_base)); then
  log "making the base image $BASE_IMAGE locally (mmdebstrap bookworm, ~1-2 min) ..."
  t0=$SECONDS
  tarball="$(mktemp "$cache_dir/base-XXXXXX.tar")"
  trap 'rm -f "$tarball"' EXIT
  nice -n 10 mmdebstrap --quiet --variant=minbase --mode=root --format=tar \
    --include=python3,python3-pip,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook="cp $ca_bundle \"\$1$ca_bundle\"" \
    --customize-hook='rm -f "$1"/usr/lib/python3.11/EXTERNALLY-MANAGED' \
    --customize-hook='ln -sf /usr/bin/python3 "$1"/usr/local/bin/python' \
    --customize-hook='ln -sf /usr/bin/pip3 "$1"/usr/local/bin/pip' \
    bookworm "$tarball" http://deb.debian.org/debian >&2
  "${podman_cmd[@]}" import \
    --change "ENV PIP_CERT=$ca_bundle" \
    --change "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change 'CMD ["python3"]' \
    --change "LABEL $BASE_LABEL=$base_key" \
    "$tarball" "$BASE_IMAGE" >&2
  rm -f "$tarball"
  trap - EXIT
  log "base image made in $((SECONDS - t0))s"
fi
base_id="$("${podman_cmd[@]}" image inspect --format '{{.Id}}' "$BASE_IMAGE")"

# ---- 3. the Dockerfile ----
key="$(cd "$root" && {
  echo "base $base_id"
  echo "recipe 2"  # 2: built with --no-cache (below); images of recipe 1 may hold an old webhook
  find "${KEY_SOURCES[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -name '*.so' -print0 \
    | LC_ALL=C sort -z | xargs -0 sha256sum
} | sha256sum | cut -c1-16)"
image="$IMAGE_REPO:test-$key"
if "${podman_cmd[@]}" image exists "$image"; then
  log "cached: $image"
  echo "$image"
  exit 0
fi
log "podman build of $root/Dockerfile -> $image ..."
t0=$SECONDS
# --no-cache: podman 4.3 (bookworm) keys a cached RUN layer on its instruction text only, not on the content of a
# `--mount=type=bind,from=build` stage, so the runtime stage's `pip install` layer of the first build was reused
# for every later source change (images of other content keys ran the old webhook). The content key above already
# skips the build when nothing changed.
(cd "$root" && nice -n 10 "${podman_cmd[@]}" build --no-cache --pull=never --network host "${run_opts[@]}" \
  --file Dockerfile --tag "$image" --label "io.wi-webhook.content-key=$key" . >&2)
log "image built in $((SECONDS - t0))s"
echo "$image"
