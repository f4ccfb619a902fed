"""Install the webhook the way a user does, on a cluster with a pod network: the image built from the Dockerfile
pushed to a registry, the chart packaged and pushed there as an OCI artifact, `helm install` from the registry with
only `azureTenantID` and the image's registry set (everything else the chart's defaults: 2 replicas on the pod
network behind a ClusterIP Service, the API server calling that Service, self-managed certificates for its DNS
name, the webhook reaching the API server through `kubernetes.default.svc`), `helm test`, a labelled pod injected
and running on the pod network, and `helm uninstall`.

The `installed` fixture runs the chart README's install section itself.
"""

from __future__ import annotations

import base64
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.node.kube import describe, namespace, wait_for, wait_pod_phase
from tests.node.podnet.conftest import Helm
from tests.node.podnetwork import PodNetworkCluster

REPO_ROOT = Path(__file__).resolve().parents[3]
CHART = REPO_ROOT / "charts" / "workload-identity-webhook"
RELEASE, RELEASE_NS = "workload-identity-webhook", "azure-workload-identity-system"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "00000000-1111-2222-3333-444444444444"
APP_VERSION = re.search(r'^appVersion: "?([^"\n]+)', (CHART / "Chart.yaml").read_text(), re.M).group(1)  # type: ignore[union-attr]
CHART_VERSION = re.search(r"^version: (\S+)", (CHART / "Chart.yaml").read_text(), re.M).group(1)  # type: ignore[union-attr]


def readme_install_commands() -> list[str]:
    """The chart README's install commands, one per line (continuations joined)."""
    section = (CHART / "README.md").read_text().split("## Install\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def installed(podnet: PodNetworkCluster, helm: Helm, webhook_image: str, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Any]:
    """The chart README's install section, run as it is: the registry is the test's (plain HTTP, so
    `--plain-http`/`--tls-verify=false` are added), `podman build` is hack/image/build.sh's build of the same
    Dockerfile (tagged as the README names it), and commands run in a scratch directory."""
    from tests.node.images import podman

    workdir = tmp_path_factory.mktemp("install")
    commands = readme_install_commands()
    assert commands[0].startswith("REGISTRY=") and [c.split()[:2] for c in commands[1:]] == [
        ["podman", "build"], ["podman", "push"], ["helm", "package"], ["helm", "push"], ["helm", "install"],
        ["helm", "test"]], commands
    for command in commands[1:]:
        argv = shlex.split(command.replace("$REGISTRY", podnet.registry)
                           .replace("<your-tenant-id>", TENANT).split("#", 1)[0])
        if argv[:2] == ["podman", "build"]:
            assert argv[-1] == "." and argv[2] == "-t"
            podman("tag", webhook_image, argv[3])
        elif argv[:2] == ["podman", "push"]:
            podman("push", "--tls-verify=false", *argv[2:], timeout=300)
        elif argv[:2] == ["helm", "package"]:
            helm("package", str(REPO_ROOT / argv[2]), "-d", str(workdir))
        elif argv[:2] == ["helm", "push"]:
            helm("push", str(workdir / argv[2]), *argv[3:], "--plain-http")
        elif argv[:2] == ["helm", "install"]:
            helm(*argv[1:], "--plain-http", "--timeout", "180s")
        else:
            tested = helm(*argv[1:], timeout=240)
            assert "ok: the webhook injected the labelled pod" in tested.stdout, tested.stdout
    try:
        yield podnet.api_client()
    finally:
        podman("rmi", f"{podnet.registry}/workload-identity-webhook:{APP_VERSION}", check=False)  # the tag only


def test_the_default_install_serves_on_the_pod_network(installed: Any, podnet: PodNetworkCluster, helm: Helm) -> None:
    apps, core = client.AppsV1Api(installed), client.CoreV1Api(installed)
    deployment = apps.read_namespaced_deployment("azure-wi-webhook-controller-manager", RELEASE_NS)
    assert deployment.spec.replicas == 2 and deployment.status.ready_replicas == 2
    pods = [p for p in core.list_namespaced_pod(RELEASE_NS, label_selector=f"release={RELEASE}").items
            if p.metadata.deletion_timestamp is None and p.status.phase == "Running"]
    assert len(pods) == 2 and all(p.status.pod_ip.startswith("10.244.0.") and not p.spec.host_network for p in pods)
    assert all(p.spec.containers[0].image == f"{podnet.registry}/workload-identity-webhook:{APP_VERSION}" for p in pods)
    service = core.read_namespaced_service("azure-wi-webhook-webhook-service", RELEASE_NS)
    assert service.spec.type == "ClusterIP" and service.spec.cluster_ip.startswith("10.96.0.")
    hooks = client.AdmissionregistrationV1Api(installed).read_mutating_webhook_configuration(
        "azure-wi-webhook-mutating-webhook-configuration").webhooks
    assert hooks[0].client_config.service.name == "azure-wi-webhook-webhook-service"
    secret = core.read_namespaced_secret("azure-wi-webhook-server-cert", RELEASE_NS)
    assert base64.b64decode(hooks[0].client_config.ca_bundle) == base64.b64decode(secret.data["ca.crt"]) or \
        base64.b64decode(secret.data["ca.crt"]) in base64.b64decode(hooks[0].client_config.ca_bundle)

    # `helm test` (run by the install section) went through the API server, the Service and a replica; again:
    tested = helm("test", RELEASE, "--namespace", RELEASE_NS, "--logs", timeout=240)
    assert "ok: the webhook injected the labelled pod" in tested.stdout, tested.stdout

    # A labelled pod of a user's namespace: injected, and running on the pod network with its projected token.
    with namespace(installed, "podnet-app") as ns:
        core.create_namespaced_service_account(ns, {"metadata": {
            "name": "app", "annotations": {"azure.workload.identity/client-id": CLIENT_ID}}})
        created = core.create_namespaced_pod(ns, {"metadata": {
            "name": "app", "labels": {"azure.workload.identity/use": "true"}},
            "spec": {"serviceAccountName": "app", "terminationGracePeriodSeconds": 1, "containers": [{
                "name": "app", "image": f"{podnet.registry}/workload-identity-webhook:{APP_VERSION}",
                "command": ["python", "-c", "import time; time.sleep(3600)"]}]}})
        env = {e.name: e.value for e in created.spec.containers[0].env}
        assert env["AZURE_CLIENT_ID"] == CLIENT_ID and env["AZURE_TENANT_ID"] == TENANT
        try:
            running = wait_pod_phase(installed, ns, "app", {"Running"}, timeout=120)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{describe(installed, ns, 'app')}") from None
        assert running.status.pod_ip.startswith("10.244.0.")
        token = wait_for(lambda: _exec(installed, ns, "app", ["cat", env["AZURE_FEDERATED_TOKEN_FILE"]]), 60,
                         "the projected token in the pod")
        claims = token.split(".")[1]
        assert f"system:serviceaccount:{ns}:app" in base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)).decode()


def test_uninstall_removes_the_release(installed: Any, helm: Helm) -> None:
    helm("uninstall", RELEASE, "--namespace", RELEASE_NS, "--wait", "--timeout", "120s")
    admission = client.AdmissionregistrationV1Api(installed)
    assert not [c for c in admission.list_mutating_webhook_configuration().items
                if c.metadata.name == "azure-wi-webhook-mutating-webhook-configuration"]
    assert not client.AppsV1Api(installed).list_namespaced_deployment(RELEASE_NS).items


def _exec(api: Any, ns: str, pod: str, command: list[str]) -> str:
    from kubernetes.stream import stream

    output: str = stream(client.CoreV1Api(api).connect_get_namespaced_pod_exec, pod, ns, command=command,
                         stderr=True, stdin=False, stdout=True, tty=False, _request_timeout=30)
    return output.strip()
