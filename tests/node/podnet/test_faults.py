"""The chart's default two replicas on the pod network, under faults, with a stream of labelled pod creations
running throughout (every creation counted; none may be admitted without the identity):
* one replica's pod deleted (as `kubectl delete pod` does): no creation fails;
* `helm upgrade` to a new image tag (a rolling update): no creation fails;
* SIGKILL of the serving replica's container: creations fail only in a short window (the API server does not retry
  on the other replica; kube-proxy still sends new connections to the dead endpoint until the kubelet marks the pod
  NotReady), measured and reported;
* the API server restarted while the webhook runs: the webhook recovers without a restart of its own.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.node.kube import namespace, wait_for
from tests.node.podnet.conftest import Helm
from tests.node.podnetwork import PodNetworkCluster
from tests.node.test_node_faults import (
    STREAM_LIMIT_S,
    _next_index,
    injected,
    pending_pod,
    report,
    stream_creations,
    workload_account,
)

CHART = Path(__file__).resolve().parents[3] / "charts" / "workload-identity-webhook"
RELEASE, RELEASE_NS = "wi-faults", "azure-workload-identity-system"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
DEPLOYMENT = "azure-wi-webhook-controller-manager"
SELECTOR = f"release={RELEASE}"


@pytest.fixture(scope="module")
def release(podnet: PodNetworkCluster, helm: Helm, webhook_image: str) -> Iterator[dict[str, Any]]:
    """The chart installed with its defaults from the local registry (two tags of the image: for an upgrade)."""
    from tests.node.images import podman

    tags = ("faults-a", "faults-b")
    for tag in tags:
        podman("tag", webhook_image, f"{podnet.registry}/workload-identity-webhook:{tag}")
        podman("push", "--tls-verify=false", f"{podnet.registry}/workload-identity-webhook:{tag}", timeout=300)
    helm("install", RELEASE, str(CHART), "--namespace", RELEASE_NS, "--create-namespace", "--wait",
         "--timeout", "180s", "--set", f"azureTenantID={TENANT}",
         "--set", f"image.repository={podnet.registry}/workload-identity-webhook", "--set", f"image.tag={tags[0]}")
    api = podnet.api_client()
    try:
        yield {"api": api, "tags": tags}
    finally:
        helm("uninstall", RELEASE, "--namespace", RELEASE_NS, "--wait", "--timeout", "120s", check=False)
        for tag in tags:
            podman("rmi", f"{podnet.registry}/workload-identity-webhook:{tag}", check=False)


def replicas(api: Any) -> list[Any]:
    return [p for p in client.CoreV1Api(api).list_namespaced_pod(RELEASE_NS, label_selector=SELECTOR).items
            if p.metadata.deletion_timestamp is None]


def ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def rolled_out(api: Any, image_tag: str | None = None) -> Callable[[], bool]:
    def check() -> bool:
        deployment = client.AppsV1Api(api).read_namespaced_deployment(DEPLOYMENT, RELEASE_NS)
        pods = replicas(api)
        return (deployment.status.ready_replicas == 2 == deployment.status.updated_replicas == len(pods)
                and all(ready(p) for p in pods)
                and (image_tag is None or all(p.spec.containers[0].image.endswith(f":{image_tag}") for p in pods)))
    return check


def reviews(pod: Any) -> float:
    """The replica's count of answered reviews, from its metrics port on the pod network."""
    with urllib.request.urlopen(f"http://{pod.status.pod_ip}:8095/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("wi_webhook_admission_requests_total{"))


def serving_replica(api: Any, ns: str) -> Any:
    """The replica the API server's keep-alive connection goes to: the one whose count moves with creations. (Just
    after a rollout, the connection may still be to a terminating old pod, which serves until it exits: ask again.)"""
    core = client.CoreV1Api(api)
    seen: list[str] = []
    for _ in range(10):
        before = {p.metadata.name: reviews(p) for p in replicas(api)}
        admitted, failures = stream_creations(core, ns, lambda: True)
        after = {p.metadata.name: reviews(p) for p in replicas(api)}
        moved = [p for p in replicas(api) if after.get(p.metadata.name, 0) > before.get(p.metadata.name, 0)]
        if moved:
            return moved[0]
        seen.append(f"{before} -> {after}; {len(admitted)} admitted, {failures}")
        time.sleep(2)
    raise AssertionError(f"no current replica answered the creations: {seen}")


def recovered(core: Any, name: str, restarts: int) -> bool:
    pod = core.read_namespaced_pod(name, RELEASE_NS)
    return bool(pod.status.container_statuses[0].restart_count > restarts and ready(pod))


def check_stream(admitted: list[Any], failures: list[str]) -> None:
    assert admitted and all(injected(pod) for pod in admitted), "a pod was admitted without the identity"


def test_deleting_a_replica_fails_no_creation(release: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    api = release["api"]
    core = client.CoreV1Api(api)
    with namespace(api, "podnet-delete") as ns:
        workload_account(core, ns)
        victim = serving_replica(api, ns)
        core.delete_namespaced_pod(victim.metadata.name, RELEASE_NS)
        started = time.monotonic()
        admitted, failures = stream_creations(core, ns, lambda: victim.metadata.name not in {
            p.metadata.name for p in replicas(api)} and rolled_out(api)())
        report(capsys, f"pod network, serving replica deleted: {len(admitted)} creations admitted, "
                       f"{len(failures)} failed, {time.monotonic() - started:.1f}s")
        check_stream(admitted, failures)
        assert failures == [], failures


def test_a_rolling_upgrade_fails_no_creation(release: dict[str, Any], podnet: PodNetworkCluster, helm: Helm,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    api = release["api"]
    core = client.CoreV1Api(api)
    helm_bin = Path(helm("version", "--short").args[0])
    env = helm.env  # type: ignore[attr-defined]
    with namespace(api, "podnet-upgrade") as ns:
        workload_account(core, ns)
        started = time.monotonic()
        upgrade = subprocess.Popen([str(helm_bin), "upgrade", RELEASE, str(CHART), "--namespace", RELEASE_NS,
                                    "--reuse-values", "--set", f"image.tag={release['tags'][1]}", "--wait",
                                    "--timeout", "180s"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   env=env, text=True)
        try:
            admitted, failures = stream_creations(core, ns, lambda: upgrade.poll() is not None
                                                  and rolled_out(api, release["tags"][1])())
        finally:
            output = upgrade.communicate(timeout=200)[0]
        report(capsys, f"pod network, helm upgrade: {len(admitted)} creations admitted, {len(failures)} failed, "
                       f"{time.monotonic() - started:.1f}s")
        assert upgrade.returncode == 0, output
        check_stream(admitted, failures)
        assert failures == [], failures


def test_a_killed_replica_fails_creations_only_briefly(release: dict[str, Any], podnet: PodNetworkCluster,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    api = release["api"]
    core = client.CoreV1Api(api)
    with namespace(api, "podnet-kill") as ns:
        workload_account(core, ns)
        victim = serving_replica(api, ns)
        restarts = victim.status.container_statuses[0].restart_count
        container = victim.status.container_statuses[0].container_id.split("://", 1)[1]
        podnet.ctr("tasks", "kill", "-s", "SIGKILL", container)
        killed = time.monotonic()
        admitted: list[Any] = []
        failures: list[str] = []
        failed_after: list[float] = []  # seconds after the kill
        done_at = None
        while time.monotonic() < killed + STREAM_LIMIT_S:
            try:
                admitted.append(core.create_namespaced_pod(ns, pending_pod(next(_next_index))))
            except ApiException as exc:
                failures.append(str(exc.body))
                failed_after.append(time.monotonic() - killed)
            if done_at is None and recovered(core, victim.metadata.name, restarts):
                done_at = len(admitted)
            if done_at is not None and len(admitted) >= done_at + 5:
                break
            time.sleep(0.25)
        window = max(failed_after, default=0.0)
        report(capsys, f"pod network, serving replica SIGKILLed: {len(admitted)} creations admitted, "
                       f"{len(failures)} failed (the last {window:.1f}s after the kill), "
                       f"{time.monotonic() - killed:.1f}s until it was Ready again")
        check_stream(admitted, failures)
        assert all("azure-wi-webhook-webhook-service" in f or "mutation.azure-workload-identity.io" in f
                   for f in failures), failures  # failed closed, naming the webhook
        assert len(failures) <= 10, failures


def test_certificate_rotations_while_both_replicas_serve(release: dict[str, Any], podnet: PodNetworkCluster,
                                                       helm: Helm, capsys: pytest.CaptureFixture[str]) -> None:
    """renewBefore above the serving certificate's validity (365 days) makes every check (every 10 s) reissue it:
    both replicas write the one Secret, and each reloads what it holds. No admission fails, and in the end both
    serve a certificate that verifies, for the Service's DNS name, against the webhook configuration's caBundle."""
    import base64
    import socket
    import ssl
    import tempfile

    api = release["api"]
    core = client.CoreV1Api(api)
    helm("upgrade", RELEASE, str(CHART), "--namespace", RELEASE_NS, "--reuse-values", "--wait", "--timeout", "180s",
         "--set", "certificates.selfManaged.renewBefore=8761h",
         "--set", "certificates.selfManaged.rotationCheckInterval=10s")
    wait_for(rolled_out(api), 120, "the rollout with the rotation settings")

    def serving_cert() -> bytes:
        data: bytes = base64.b64decode(core.read_namespaced_secret("azure-wi-webhook-server-cert", RELEASE_NS)
                                       .data["tls.crt"])
        return data

    first = serving_cert()
    with namespace(api, "podnet-rotate") as ns:
        workload_account(core, ns)
        started = time.monotonic()
        seen = {first}
        admitted, failures = stream_creations(core, ns, lambda: seen.add(serving_cert()) is None and
                                              len(seen) >= 3 and time.monotonic() - started > 35)
        report(capsys, f"pod network, certificates reissued {len(seen) - 1} times while both replicas served: "
                       f"{len(admitted)} creations admitted, {len(failures)} failed")
        check_stream(admitted, failures)
        assert failures == [] and len(seen) >= 3, (failures, len(seen))
    bundle = base64.b64decode(client.AdmissionregistrationV1Api(api).read_mutating_webhook_configuration(
        "azure-wi-webhook-mutating-webhook-configuration").webhooks[0].client_config.ca_bundle)
    with tempfile.NamedTemporaryFile("wb", suffix=".pem") as ca_file:
        ca_file.write(bundle)
        ca_file.flush()
        context = ssl.create_default_context(cafile=ca_file.name)
        for pod in replicas(api):  # each replica's certificate verifies against the caBundle (OpenSSL's checks)
            with socket.create_connection((pod.status.pod_ip, 9443), timeout=5) as raw, context.wrap_socket(
                    raw, server_hostname=f"azure-wi-webhook-webhook-service.{RELEASE_NS}.svc") as tls:
                assert tls.getpeercert()


def test_the_webhook_survives_an_api_server_restart(release: dict[str, Any], podnet: PodNetworkCluster) -> None:
    api = release["api"]
    before = {p.metadata.name: p.status.container_statuses[0].restart_count for p in replicas(api)}
    podnet.apiserver.stop_apiserver()
    time.sleep(3)
    podnet.apiserver.start_apiserver()
    core = client.CoreV1Api(podnet.api_client())
    with namespace(podnet.api_client(), "podnet-restart") as ns:
        workload_account(core, ns)
        admitted = wait_for(lambda: injected(core.create_namespaced_pod(ns, {
            "metadata": {"generateName": "after-", "labels": {"azure.workload.identity/use": "true"}},
            "spec": {"serviceAccountName": "workload", "nodeSelector": {"wi-webhook-tests/no-such-node": "x"},
                     "containers": [{"name": "app", "image": "localhost/none:never"}]}})), 90,
                            "a pod injected after the API server restart")
        assert admitted
    after = {p.metadata.name: p.status.container_statuses[0].restart_count for p in replicas(podnet.api_client())}
    assert after == before, (before, after)  # recovered without restarting
