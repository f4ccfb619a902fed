"""Faults on the real node, with the chart's hostNetwork values (one replica, `serve --reuse-port`):
* the webhook pod deleted while pods are created: the Deployment's new pod starts on the same node ports and the
  old one serves until the new one answers /readyz, so no creation fails;
* the webhook killed abruptly (no hand-off possible): failurePolicy Fail, so creations fail naming the webhook, then
  succeed once the Deployment's new pod is Ready; nothing is admitted without the identity;
* a chart upgrade under a steady stream of creations: the pod is replaced and no creation fails;
* uninstalling the chart leaves no webhook configuration behind."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.node.kube import namespace, wait_for
from tests.node.realnode import NodeCluster
from tests.node.release import CLIENT_ID, MWC, WEBHOOK_NAME, Release

STREAM_LIMIT_S = 180.0  # the whole stream is bounded
_next_index = iter(range(1, 1_000_000))


def pending_pod(index: int) -> dict[str, Any]:
    """A labelled pod that is admitted and stored but never scheduled (no such node): admission is what counts,
    and the 2-core node is not loaded with containers."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"p{index:04d}", "labels": {"azure.workload.identity/use": "true"}},
            "spec": {"serviceAccountName": "workload", "nodeSelector": {"wi-webhook-tests/no-such-node": "x"},
                     "containers": [{"name": "app", "image": "localhost/none:never", "imagePullPolicy": "Never"}]}}


def injected(pod: Any) -> bool:
    return any(e.name == "AZURE_FEDERATED_TOKEN_FILE" for e in pod.spec.containers[0].env or [])


def workload_account(core: Any, ns: str) -> None:
    core.create_namespaced_service_account(ns, {"metadata": {
        "name": "workload", "annotations": {"azure.workload.identity/client-id": CLIENT_ID}}})


def stream_creations(core: Any, ns: str, until: Callable[[], bool], limit_s: float = STREAM_LIMIT_S
                     ) -> tuple[list[Any], list[str]]:
    """Create pending pods every 0.2 s until `until()` is true and 5 more were admitted after it (bounded)."""
    admitted: list[Any] = []
    failures: list[str] = []
    deadline = time.monotonic() + limit_s
    done_at = None
    while time.monotonic() < deadline:
        try:
            admitted.append(core.create_namespaced_pod(ns, pending_pod(next(_next_index))))
        except ApiException as exc:
            failures.append(str(exc.body))
        if done_at is None and until():
            done_at = len(admitted)
        if done_at is not None and len(admitted) >= done_at + 5:
            break
        time.sleep(0.2)
    return admitted, failures


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\nnode faults: {text}")


def serving(release: Release) -> list[Any]:
    return [p for p in release.pods() if p.metadata.deletion_timestamp is None]


def replaced(release: Release, old: Any) -> Callable[[], bool]:
    """The old pod is gone and a new one is Ready: the Deployment has replaced it."""
    def check() -> bool:
        pods = release.pods()
        return old.metadata.name not in {p.metadata.name for p in pods} and any(
            c.type == "Ready" and c.status == "True" for p in pods for c in p.status.conditions or [])
    return check


def check_all_injected(core: Any, ns: str, admitted: list[Any]) -> None:
    assert admitted and all(injected(p) for p in admitted)
    stored = core.list_namespaced_pod(ns).items
    assert stored and all(injected(p) for p in stored)


def test_deleting_the_webhook_pod_hands_off_without_a_failed_creation(release: Release,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`kubectl delete pod`: SIGTERM, and the ReplicaSet's new pod starts on the node beside the old one, which
    serves until the new one answers /readyz (the chart's shutdownDelaySeconds, 30 s, bounds that wait)."""
    core = client.CoreV1Api(release.api)
    [old] = serving(release)
    with namespace(release.api, "node-delete") as ns:
        workload_account(core, ns)
        assert injected(core.create_namespaced_pod(ns, pending_pod(0)))  # served before the deletion
        core.delete_namespaced_pod(old.metadata.name, release.namespace)
        started = time.monotonic()
        admitted, failures = stream_creations(core, ns, replaced(release, old))
        report(capsys, f"pod deleted: {len(admitted)} creations admitted, {len(failures)} failed, "
                       f"{time.monotonic() - started:.1f}s")
        assert replaced(release, old)(), f"not replaced within {STREAM_LIMIT_S:.0f}s: {release.pods()}"
        assert failures == [], f"{len(failures)} creations failed during the hand-off: {failures[:3]}"
        check_all_injected(core, ns, admitted)
        [new] = serving(release)
        assert new.metadata.name != old.metadata.name
        release.wait_rolled_out(timeout=60)


def test_killing_the_webhook_fails_creations_closed_then_recovers(release: Release, node: NodeCluster,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """No hand-off: the webhook's container is SIGKILLed and its pod force-deleted. With failurePolicy Fail,
    creations fail naming the webhook, then succeed once the Deployment's new pod is Ready; nothing is admitted
    without the identity."""
    core = client.CoreV1Api(release.api)
    [old] = serving(release)
    [status] = old.status.container_statuses
    runtime, _, container_id = status.container_id.partition("://")
    assert runtime == "containerd" and container_id, status.container_id
    with namespace(release.api, "node-kill") as ns:
        workload_account(core, ns)
        assert injected(core.create_namespaced_pod(ns, pending_pod(0)))  # served before the fault
        node.ctr("tasks", "kill", "-s", "SIGKILL", container_id)
        core.delete_namespaced_pod(old.metadata.name, release.namespace, grace_period_seconds=0)
        started = time.monotonic()
        admitted, failures = stream_creations(core, ns, replaced(release, old))
        report(capsys, f"webhook killed: {len(admitted)} creations admitted, {len(failures)} failed (closed), "
                       f"{time.monotonic() - started:.1f}s")
        assert replaced(release, old)(), f"not replaced within {STREAM_LIMIT_S:.0f}s: {release.pods()}"
        # Fail closed, naming the webhook; then every later creation succeeds and nothing went through un-injected.
        assert failures, "no creation failed while the only webhook was dead"
        assert all(WEBHOOK_NAME in f for f in failures), failures[:3]
        check_all_injected(core, ns, admitted)
        [new] = serving(release)
        assert new.metadata.name != old.metadata.name
        release.wait_rolled_out(timeout=60)


def test_a_chart_upgrade_rolls_the_webhook_without_a_failed_creation(release: Release,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """An upgrade (a changed value rolls the pod) under a steady stream of creations: the new pod surges beside the
    old one on the same node ports (maxSurge 1, `serve --reuse-port`), the old one serves until the new one is
    ready, then leaves: no creation fails and every pod is injected."""
    core = client.CoreV1Api(release.api)
    [old] = serving(release)
    assert "--reuse-port" in old.spec.containers[0].args
    with namespace(release.api, "node-upgrade") as ns:
        workload_account(core, ns)
        release.apply({**release.values, "logLevel": "debug"})

        def rolled() -> bool:
            dep = release.deployment()
            s = dep.status
            return bool((s.observed_generation or 0) >= dep.metadata.generation
                        and (s.updated_replicas or 0) == 1 and (s.available_replicas or 0) == 1
                        and (s.replicas or 0) == 1 and old.metadata.name not in
                        {p.metadata.name for p in release.pods()})

        started = time.monotonic()
        admitted, failures = stream_creations(core, ns, rolled)
        report(capsys, f"chart upgrade: {len(admitted)} creations admitted, {len(failures)} failed, "
                       f"{time.monotonic() - started:.1f}s")
        assert rolled(), f"the upgrade did not complete within {STREAM_LIMIT_S:.0f}s: {release.deployment().status}"
        assert failures == [], f"{len(failures)} creations failed during the upgrade: {failures[:3]}"
        check_all_injected(core, ns, admitted)
        [new] = serving(release)
        assert new.metadata.name != old.metadata.name
        assert "--log-level=debug" in new.spec.containers[0].args
        assert "--log-level=debug" not in old.spec.containers[0].args


def test_uninstall_leaves_no_webhook_configuration(release: Release) -> None:
    """Last in this module: the module's release is uninstalled here (its teardown then has nothing left)."""
    admission = client.AdmissionregistrationV1Api(release.api)
    assert MWC in {m.metadata.name for m in admission.list_mutating_webhook_configuration().items}
    release.uninstall()

    def gone() -> bool:
        names = {m.metadata.name for m in admission.list_mutating_webhook_configuration().items}
        names |= {v.metadata.name for v in admission.list_validating_webhook_configuration().items}
        return not any(n.startswith("azure-wi-webhook") for n in names)

    wait_for(gone, 30, "no azure-wi-webhook webhook configuration left")
    # Labelled pods are admitted as they are (no webhook is called any more), even with the webhook gone.
    core = client.CoreV1Api(release.api)
    with namespace(release.api, "node-after") as ns:
        core.create_namespaced_service_account(ns, {"metadata": {"name": "workload"}})
        assert not injected(core.create_namespaced_pod(ns, pending_pod(0)))
