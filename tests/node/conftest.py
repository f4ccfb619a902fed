"""Fixtures for the real-node tests: the project's image (`webhook_image`) and a real single-node cluster (`node`).

The slow parts (podman build of the Dockerfile; packages and kubelet/kcm/scheduler builds) run right after
collection, outside any per-test timeout, and only when a collected test needs them; a failed build fails those
tests with its output (they never skip). The cluster is one per session (≈15-30 s to start), tests isolate
themselves by namespace; at the end it is stopped and the host checked back to how it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.node.images import ImageError, ensure_example_image, ensure_reference_images, ensure_webhook_image
from tests.node.kube import delete_namespace
from tests.node.podnetwork import ensure_podnet_tools
from tests.node.realnode import NodeCluster, NodeError, ensure_node_binaries
from tests.node.release import CHART_NS, Release
from tests.processes import free_port

BASE_IMAGE = "docker.io/library/python:3.11-slim-bookworm"  # the Dockerfile's base (made by hack/image/build.sh)
_built: dict[str, Any] = {}
_errors: dict[str, BaseException] = {}


def _uses(session: pytest.Session, fixture: str) -> bool:
    return any(fixture in getattr(item, "fixturenames", ()) for item in session.items)


def _build(session: pytest.Session, key: str, what: str, build: Callable[[], Any]) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    t0 = time.monotonic()
    if reporter is not None:
        reporter.write_line(f"node: {what} ...")
    try:
        _built[key] = build()
    except (ImageError, NodeError) as exc:
        _errors[key] = exc
    if reporter is not None:
        outcome = "FAILED" if key in _errors else f"ok: {_built[key]}"
        reporter.write_line(f"node: {key} {outcome} ({time.monotonic() - t0:.1f}s)")


def pytest_collection_finish(session: pytest.Session) -> None:
    if "image" not in _built and _uses(session, "webhook_image"):
        _build(session, "image", "hack/image/build.sh (podman build of the Dockerfile; first time ~2-4 min)",
               ensure_webhook_image)
    if "example" not in _built and "image" in _built and _uses(session, "example_image"):
        _build(session, "example", "examples/keyvault-reader built on the image (podman)",
               lambda: ensure_example_image(_built["image"]))
    if "reference" not in _built and "image" in _built and _uses(session, "proxy_images"):
        _build(session, "reference", "hack/reference/images.sh (the reference's webhook, proxy and proxy-init "
               "images from its Go module; ~2 min cold)", ensure_reference_images)
    if "podnet_tools" not in _built and _uses(session, "podnet"):
        _build(session, "podnet_tools", "hack/helm/build.sh and hack/registry/build.sh (helm v4 and an OCI registry "
               "from their Go modules; ~2 min cold)", ensure_podnet_tools)
    if "bin_dir" not in _built and (_uses(session, "node") or _uses(session, "podnet")):
        _build(session, "bin_dir", "hack/test-node/prepare.sh (packages; kubelet, kcm, scheduler: first time "
               "~3-8 min after the kube-apiserver build)", ensure_node_binaries)


def _get(key: str) -> Any:
    if key in _errors:
        raise _errors[key]
    assert key in _built, f"{key}: not built after collection (pytest_collection_finish)"
    return _built[key]


@pytest.fixture(scope="session")
def webhook_image() -> str:
    """The image built from the Dockerfile (podman), e.g. localhost/workload-identity-webhook:test-<key>."""
    return str(_get("image"))


@pytest.fixture(scope="session")
def proxy_images(webhook_image: str) -> tuple[str, str]:
    """(PROXY_IMAGE, PROXY_INIT_IMAGE): the reference's own proxy and proxy-init, built from its module (the
    published images cannot be pulled here)."""
    _, proxy, init = _get("reference")
    return str(proxy), str(init)


@pytest.fixture(scope="session")
def example_image(webhook_image: str) -> str:
    """examples/keyvault-reader's Dockerfile built on the project's image (so `wi-webhook verify` is in it)."""
    return str(_get("example"))


@pytest.fixture(scope="session")
def node(webhook_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    """A real single-node cluster with the project's image imported; stopped, and the host restored, at the end."""
    bin_dir: Path = _get("bin_dir")
    cluster = NodeCluster.start(tmp_path_factory.mktemp("node"), bin_dir, images=[webhook_image])
    try:
        yield cluster
    finally:
        problems = cluster.stop()
        assert not problems, f"the real-node cluster left changes on the host: {problems}"


def chart_values(node: NodeCluster, image: str, port: int) -> dict[str, Any]:
    """The values a user of a cluster whose API server cannot reach pod IPs would set (plus a local image)."""
    repository, tag = image.rsplit(":", 1)
    return {"image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            "replicaCount": 1, "hostNetwork": True, "webhookURL": f"https://127.0.0.1:{port}",
            "service": {"targetPort": port}, "metricsAddr": f"127.0.0.1:{free_port()}",
            # The API server calls 127.0.0.1: nothing else needs the webhook port on the host's other interfaces.
            "extraArgs": ["--host=127.0.0.1"],
            # No kube-proxy here: the in-cluster config reaches the API server through the node's loopback.
            "extraEnv": node.pod_env()}


@pytest.fixture(scope="module")
def chart_extra_values() -> dict[str, Any]:
    """Values a test module adds to the install (override this fixture in the module)."""
    return {}


@pytest.fixture(scope="module")
def release(node: NodeCluster, webhook_image: str, chart_extra_values: dict[str, Any]) -> Iterator[Release]:
    """The chart installed for one test module (its cluster-wide objects have fixed names: one at a time)."""
    api = node.api_client()
    client.CoreV1Api(api).create_namespace({"metadata": {"name": CHART_NS}})
    installed = Release(api, CHART_NS, {})
    try:
        installed.apply({**chart_values(node, webhook_image, free_port()), **chart_extra_values})
        installed.wait_rolled_out()
        yield installed
    finally:
        installed.uninstall()
        delete_namespace(api, CHART_NS)  # the next module installs into it again
        api.close()


