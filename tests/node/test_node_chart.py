"""The chart installed on the real node with the image built from the Dockerfile: the webhook runs as the chart's
Deployment (hostNetwork, registered by URL on 127.0.0.1), talks to the API server with its in-cluster
ServiceAccount token and the chart's RBAC, becomes Ready through the kubelet's probes, issues its own certificates
into the chart's Secret and caBundle, and mutates real pods that then run with the injected identity."""

from __future__ import annotations

import base64
import ipaddress
import json
from typing import Any

from cryptography import x509
from kubernetes import client

from tests.node.kube import logs, namespace, wait_pod_phase
from tests.node.realnode import NodeCluster
from tests.node.release import CHART_NS, CLIENT_ID, MWC, SA, SECRET, TENANT, Release


def test_the_webhook_runs_as_the_deployment_and_is_ready_by_its_probes(release: Release, webhook_image: str) -> None:
    [pod] = release.pods()
    assert pod.spec.host_network is True and pod.spec.service_account_name == SA
    [container] = pod.spec.containers
    assert container.image == webhook_image and container.readiness_probe.http_get.host == "127.0.0.1"
    assert not [e for e in container.env or [] if e.name == "KUBECONFIG"]  # in-cluster config, no admin file
    ready = [c for c in pod.status.conditions if c.type == "Ready"]
    assert ready and ready[0].status == "True"
    [status] = pod.status.container_statuses
    assert status.ready and status.started and status.restart_count == 0, status
    assert status.image_id  # the kubelet ran the image containerd has (imported, never pulled)


def _audit_events(node: NodeCluster) -> list[dict[str, Any]]:
    return [json.loads(line) for line in node.apiserver.audit_log.read_text().splitlines() if line.strip()]


def test_self_managed_certificates_are_issued_by_the_running_pod(release: Release, node: NodeCluster) -> None:
    core = client.CoreV1Api(release.api)
    data = core.read_namespaced_secret(SECRET, CHART_NS).data
    ca = x509.load_pem_x509_certificate(base64.b64decode(data["ca.crt"]))
    serving = x509.load_pem_x509_certificate(base64.b64decode(data["tls.crt"]))
    serving.verify_directly_issued_by(ca)
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)  # the webhookURL host
    assert f"azure-wi-webhook-webhook-service.{CHART_NS}.svc" in sans.get_values_for_type(x509.DNSName)
    mwc = client.AdmissionregistrationV1Api(release.api).read_mutating_webhook_configuration(MWC)
    bundle = base64.b64decode(mwc.webhooks[0].client_config.ca_bundle)
    assert base64.b64decode(data["ca.crt"]).strip() in bundle
    # Written by the webhook's own ServiceAccount through the chart's RBAC (the test installed with the admin user).
    user = f"system:serviceaccount:{CHART_NS}:{SA}"
    writers = {resource: {e["user"]["username"] for e in _audit_events(node)
                          if e.get("objectRef", {}).get("resource") == resource
                          and e["objectRef"].get("name") == name and e["verb"] in {"update", "patch"}
                          and e["stage"] == "ResponseComplete" and e["responseStatus"]["code"] < 300}
               for resource, name in (("secrets", SECRET), ("mutatingwebhookconfigurations", MWC))}
    assert user in writers["secrets"] and user in writers["mutatingwebhookconfigurations"], writers


def test_a_labelled_pod_is_mutated_and_runs_with_the_identity(release: Release, node: NodeCluster,
                                                              webhook_image: str) -> None:
    with namespace(release.api, "node-app") as ns:
        core = client.CoreV1Api(release.api)
        core.create_namespaced_service_account(ns, {"metadata": {
            "name": "workload", "annotations": {"azure.workload.identity/client-id": CLIENT_ID}}})
        script = ("import os; print(os.environ['AZURE_CLIENT_ID'], os.environ['AZURE_TENANT_ID'], "
                  "len(open(os.environ['AZURE_FEDERATED_TOKEN_FILE']).read()) > 100)")
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "app", "labels": {"azure.workload.identity/use": "true"}},
               "spec": {"serviceAccountName": "workload", "hostNetwork": True, "restartPolicy": "Never",
                        "securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532},
                        "containers": [{"name": "app", "image": webhook_image, "imagePullPolicy": "Never",
                                        "command": ["python", "-c", script]}]}}
        created = core.create_namespaced_pod(ns, pod)
        env = {e.name for e in created.spec.containers[0].env or []}
        assert {"AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST"} <= env
        wait_pod_phase(release.api, ns, "app", {"Succeeded"})
        assert logs(release.api, ns, "app").split() == [CLIENT_ID, TENANT, "True"]
