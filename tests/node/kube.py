"""Small, bounded helpers for the real-node tests: namespaces, pods that run to an end, their logs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

TERMINAL = {"Succeeded", "Failed"}


@contextmanager
def namespace(api: Any, prefix: str, labels: dict[str, str] | None = None) -> Iterator[str]:
    """A fresh namespace, deleted afterwards (its pods are killed by the kubelet in the background)."""
    core = client.CoreV1Api(api)
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": labels or {}}})
    try:
        yield name
    finally:
        delete_namespace(api, name, wait=False)


def delete_namespace(api: Any, name: str, wait: bool = True, timeout: float = 120.0) -> None:
    """Delete a test namespace, its pods first without grace (a test's pods need no graceful stop; the namespace
    controller would otherwise wait out each pod's terminationGracePeriodSeconds); `wait`: until it is gone."""
    core = client.CoreV1Api(api)
    try:
        core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
        core.delete_namespace(name, grace_period_seconds=0)
    except ApiException as exc:
        if exc.status != 404:
            raise
    if wait:
        wait_for(lambda: not core.list_namespace(field_selector=f"metadata.name={name}").items, timeout,
                 f"namespace {name} deleted")


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
            last = value
        except ApiException as exc:
            last = f"HTTP {exc.status}: {exc.reason}"
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})")


def wait_pod_phase(api: Any, ns: str, name: str, phases: set[str], timeout: float = 120.0) -> Any:
    core = client.CoreV1Api(api)

    def check() -> Any:
        pod = core.read_namespaced_pod(name, ns)
        if pod.status.phase in phases:
            return pod
        if pod.status.phase in TERMINAL:
            raise AssertionError(f"pod {ns}/{name} ended {pod.status.phase}: {describe(api, ns, name)}")
        return None

    return wait_for(check, timeout, f"pod {ns}/{name} in {sorted(phases)}")


def describe(api: Any, ns: str, name: str) -> str:
    """The pod's container states and recent events, for assertion messages."""
    core = client.CoreV1Api(api)
    lines = []
    try:
        pod = core.read_namespaced_pod(name, ns)
        for status in (pod.status.init_container_statuses or []) + (pod.status.container_statuses or []):
            lines.append(f"{status.name}: {status.state}")
    except ApiException as exc:
        lines.append(f"(pod: HTTP {exc.status})")
    events = core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
    lines += [f"{e.reason}: {e.message}" for e in events[-10:]]
    return "\n".join(lines)


def logs(api: Any, ns: str, name: str, container: str | None = None) -> str:
    kwargs = {"container": container} if container else {}
    return str(client.CoreV1Api(api).read_namespaced_pod_log(name, ns, **kwargs))
