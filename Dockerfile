# syntax=docker/dockerfile:1
# Image of the Azure Workload Identity webhook: `wi-webhook` (by default `serve`) as UID/GID 65532 on a read-only root
# filesystem.
#
# The base is pinned by tag. Pin it by digest as well where the registry can be reached, e.g.
#   docker buildx imagetools inspect python:3.11-slim-bookworm --format '{{json .Manifest.Digest}}'
# and use `python:3.11-slim-bookworm@sha256:<digest>` in both stages (it could not be resolved where this was
# written: no registry access).

# ---- build: wheels for the webhook and every dependency (pure Python package: no compiler needed) ----
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY webhook ./webhook
RUN pip wheel . -w /wheels

# ---- runtime: only the wheels, installed offline; no build tools, no pip cache ----
FROM python:3.11-slim-bookworm
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="workload-identity-webhook" \
      org.opencontainers.image.description="Azure Workload Identity mutating admission webhook (drop-in replacement for the reference v1.6.0 webhook)" \
      org.opencontainers.image.source="https://github.com/workload-identity-webhook/workload-identity-webhook" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are bind-mounted from the build stage, so they never become a layer of this image. pip compiles the
# bytecode at install time: nothing is written at runtime. DL3013 (pin pip versions): the only index is /wheels,
# built above from this source tree, so there is exactly one version of everything to install.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels workload-identity-webhook \
    && groupadd --system --gid 65532 nonroot \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin nonroot
USER 65532:65532
WORKDIR /
# 9443 webhook (HTTPS), 9440 health (/healthz, /readyz), 8095 metrics.
EXPOSE 9443 9440 8095
# Every command runs: `IMAGE` serves, `IMAGE check -f /src` checks manifests in CI (the chart passes `serve`).
ENTRYPOINT ["wi-webhook"]
CMD ["serve"]
