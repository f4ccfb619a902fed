"""A pod with `inject-proxy-sidecar` on the real node: the kubelet accepts and runs the containers the webhook
injects, the reference's own `azwi-proxy-init` (its init-iptables.sh as root, privileged, NET_ADMIN: the IMDS
address redirected to the proxy's port in the pod's network namespace) and `azwi-proxy` (non-root, read-only root,
its postStart `--probe` against /readyz), as a native sidecar (an init container with restartPolicy Always) and as
a classic sidecar container. Both images are built from the reference's Go module (hack/reference/images.sh).

The webhook refuses the proxy for hostNetwork pods (as the reference does), so this is the one pod of the suite on
the CNI bridge; nothing dials it: its state and logs are read from the API server. A token fetched through the
proxy needs the Entra stand-in reachable from the pod network, which the hostNetwork harness does not have."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.node.kube import describe, logs, namespace, wait_for, wait_pod_phase
from tests.node.realnode import NodeCluster
from tests.node.release import CLIENT_ID, Release

PROXY_ANNOTATION = "azure.workload.identity/inject-proxy-sidecar"


@pytest.fixture(scope="module", params=["true", "false"], ids=["native-sidecar", "classic-sidecar"])
def chart_extra_values(request: pytest.FixtureRequest, node: NodeCluster, proxy_images: tuple[str, str]
                       ) -> dict[str, Any]:
    proxy, init = proxy_images
    for image in proxy_images:
        node.import_image(image)
    return {"nativeSidecar": request.param, "proxy": {"image": proxy, "initImage": init}}


def test_the_kubelet_runs_the_injected_proxy_containers(release: Release, webhook_image: str,
                                                        proxy_images: tuple[str, str]) -> None:
    native = release.values["nativeSidecar"] == "true"
    core = client.CoreV1Api(release.api)
    with namespace(release.api, "node-proxy") as ns:
        core.create_namespaced_service_account(ns, {"metadata": {
            "name": "workload", "annotations": {"azure.workload.identity/client-id": CLIENT_ID}}})
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "app", "labels": {"azure.workload.identity/use": "true"},
                            "annotations": {PROXY_ANNOTATION: "true"}},
               "spec": {"serviceAccountName": "workload", "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "app", "image": webhook_image, "imagePullPolicy": "Never",
                                        "command": ["python", "-c", "import time; time.sleep(3600)"],
                                        "securityContext": {"runAsUser": 65532}}]}}
        created = core.create_namespaced_pod(ns, pod)
        inits = {c.name: c for c in created.spec.init_containers or []}
        mains = {c.name: c for c in created.spec.containers}
        assert inits["azwi-proxy-init"].image == proxy_images[1]
        sidecar = inits.get("azwi-proxy") if native else mains.get("azwi-proxy")
        assert sidecar is not None and sidecar.image == proxy_images[0], (list(inits), list(mains))
        assert (sidecar.restart_policy == "Always") is native
        try:
            running = wait_pod_phase(release.api, ns, "app", {"Running"}, timeout=120)
            ready = wait_for(lambda: all(s.ready for s in core.read_namespaced_pod("app", ns)
                                         .status.container_statuses), 60, "all containers ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{describe(release.api, ns, 'app')}") from None
        assert ready and running
        statuses = {s.name: s for s in (core.read_namespaced_pod("app", ns).status.init_container_statuses or [])
                    + core.read_namespaced_pod("app", ns).status.container_statuses}
        assert statuses["azwi-proxy-init"].state.terminated.exit_code == 0
        assert statuses["azwi-proxy"].state.running is not None and statuses["azwi-proxy"].started
        rules = logs(release.api, ns, "app", "azwi-proxy-init")  # init-iptables.sh lists the nat table it set
        assert "Chain AZWI_PROXY_REDIRECT" in rules and "redir ports 8000" in rules, rules
        assert "169.254.169.254" in rules and "owner UID match 1501" in rules, rules
        proxy_log = logs(release.api, ns, "app", "azwi-proxy")
        assert "starting the proxy server" in proxy_log and "received readyz request" in proxy_log, proxy_log
        # The sandbox is torn down by the kubelet (CNI DEL) before the namespace goes.
        core.delete_namespaced_pod("app", ns, grace_period_seconds=1)
        wait_for(lambda: not core.list_namespaced_pod(ns).items, 90, "the proxy pod deleted")
