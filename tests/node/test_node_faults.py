"""Faults on the real node: the webhook pod deleted while pods are created (failurePolicy Fail: creations fail
naming the webhook, then succeed once the Deployment's new pod is Ready; nothing is admitted without the
identity), and uninstalling the chart leaves no webhook configuration behind."""

from __future__ import annotations

import time
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.node.kube import namespace, wait_for
from tests.node.realnode import NodeCluster
from tests.node.release import CLIENT_ID, MWC, WEBHOOK_NAME, Release

STREAM_LIMIT_S = 180.0  # the whole stream is bounded


def pending_pod(index: int) -> dict[str, Any]:
    """A labelled pod that is admitted and stored but never scheduled (no such node): admission is what counts,
    and the 2-core node is not loaded with containers."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"p{index:04d}", "labels": {"azure.workload.identity/use": "true"}},
            "spec": {"serviceAccountName": "workload", "nodeSelector": {"wi-webhook-tests/no-such-node": "x"},
                     "containers": [{"name": "app", "image": "localhost/none:never", "imagePullPolicy": "Never"}]}}


def injected(pod: Any) -> bool:
    return any(e.name == "AZURE_FEDERATED_TOKEN_FILE" for e in pod.spec.containers[0].env or [])


def test_deleting_the_webhook_pod_fails_creations_closed_then_recovers(release: Release, node: NodeCluster) -> None:
    core = client.CoreV1Api(release.api)
    [old] = release.pods()
    with namespace(release.api, "node-fault") as ns:
        core.create_namespaced_service_account(ns, {"metadata": {
            "name": "workload", "annotations": {"azure.workload.identity/client-id": CLIENT_ID}}})
        assert injected(core.create_namespaced_pod(ns, pending_pod(0)))  # served before the fault
        core.delete_namespaced_pod(old.metadata.name, release.namespace)
        failures: list[str] = []
        admitted: list[Any] = []
        recovered_at = None
        deadline = time.monotonic() + STREAM_LIMIT_S
        index = 1
        while time.monotonic() < deadline:
            try:
                admitted.append(core.create_namespaced_pod(ns, pending_pod(index)))
                if failures:
                    recovered_at = recovered_at or time.monotonic()
                    if len(admitted) >= 5 and time.monotonic() - recovered_at > 2:
                        break
            except ApiException as exc:
                failures.append(str(exc.body))
            index += 1
            time.sleep(0.2)
        # Fail closed, naming the webhook; then every later creation succeeds and nothing went through un-injected.
        assert failures, "no creation failed while the only webhook pod was replaced"
        assert all(f'failed calling webhook \\"{WEBHOOK_NAME}\\"' in f or WEBHOOK_NAME in f for f in failures), \
            failures[:3]
        assert recovered_at is not None, f"creations never succeeded again: {failures[-1]}"
        assert all(injected(p) for p in admitted)
        stored = core.list_namespaced_pod(ns).items
        assert stored and all(injected(p) for p in stored)
        # The replacement serves as soon as it listens (the URL clientConfig needs no endpoints), and is Ready by
        # its readiness probe shortly after.
        [new] = [p for p in release.pods() if p.metadata.deletion_timestamp is None]
        assert new.metadata.name != old.metadata.name
        release.wait_rolled_out(timeout=60)


def stream_creations(core: Any, ns: str, until: Any, limit_s: float = STREAM_LIMIT_S
                     ) -> tuple[list[Any], list[str]]:
    """Create pending pods every 0.2 s until `until()` is true and 5 more were admitted after it (bounded)."""
    admitted: list[Any] = []
    failures: list[str] = []
    deadline = time.monotonic() + limit_s
    done_at = None
    index = 1000
    while time.monotonic() < deadline:
        try:
            admitted.append(core.create_namespaced_pod(ns, pending_pod(index)))
        except ApiException as exc:
            failures.append(str(exc.body))
        index += 1
        if done_at is None and until():
            done_at = len(admitted)
        if done_at is not None and len(admitted) >= done_at + 5:
            break
        time.sleep(0.2)
    return admitted, failures


def test_a_chart_upgrade_rolls_the_webhook_and_admits_nothing_uninjected(release: Release) -> None:
    """An upgrade (a changed value rolls the pod) completes on this one node: hostNetwork replaces the pod in place
    (maxSurge 0). With one replica the webhook is briefly down, so creations may fail then (closed, naming the
    webhook); none is admitted without the identity, and the new pod serves afterwards."""
    core = client.CoreV1Api(release.api)
    [old] = [p for p in release.pods() if p.metadata.deletion_timestamp is None]
    with namespace(release.api, "node-upgrade") as ns:
        core.create_namespaced_service_account(ns, {"metadata": {
            "name": "workload", "annotations": {"azure.workload.identity/client-id": CLIENT_ID}}})
        release.apply({**release.values, "logLevel": "debug"})

        def rolled() -> bool:
            dep = release.deployment()
            s = dep.status
            return bool((s.observed_generation or 0) >= dep.metadata.generation
                        and (s.updated_replicas or 0) == 1 and (s.available_replicas or 0) == 1
                        and (s.replicas or 0) == 1)

        admitted, failures = stream_creations(core, ns, rolled)
        assert rolled(), f"the upgrade did not complete within {STREAM_LIMIT_S:.0f}s: {release.deployment().status}"
        assert all(WEBHOOK_NAME in f for f in failures), failures[:3]
        assert admitted and all(injected(p) for p in admitted)
        assert all(injected(p) for p in core.list_namespaced_pod(ns).items)
        [new] = [p for p in release.pods() if p.metadata.deletion_timestamp is None]
        assert new.metadata.name != old.metadata.name
        assert "--log-level=debug" in new.spec.containers[0].args


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
