"""The article's walkthrough as real pods: examples/keyvault-reader (its Dockerfile, its two manifests) runs as a
Deployment with a labelled ServiceAccount; the kubelet projects the token the webhook asked for; azure-identity's
WorkloadIdentityCredential in the container exchanges it at the local Entra stand-in (which verifies it against
the API server's JWKS) and reads a secret from the local Key Vault stand-in. Without the role assignment the app
gets the 403, and `wi-webhook verify` run in the pod prints the fix.

The stand-ins listen on 127.0.0.1; the pods are hostNetwork, so that is where they reach them. The manifests are
the example's own, with what this cluster needs: the test image (imported, never pulled), hostNetwork, the
stand-ins' URLs and CA."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.stream import stream

from tests.e2e.fake_entra import FakeEntra
from tests.e2e.fake_keyvault import FakeKeyVault
from tests.node.images import EXAMPLE_DIR
from tests.node.kube import delete_namespace, describe, logs, wait_for
from tests.node.realnode import NodeCluster
from tests.node.release import CLIENT_ID, TENANT, Release

NS = "keyvault-reader"
SUBJECT = f"system:serviceaccount:{NS}:keyvault-reader"
SECRET_VALUE = "s3cret-from-the-vault"
CA_DIR = "/etc/wi-test-ca"
# The vault's name resolves to 127.0.0.1 in the pod (hostAliases), so the SDK's challenge-resource check runs as
# against the real service: the request's host is a subdomain of the challenge's resource (vault.localtest).
VAULT_HOST = "my-vault.vault.localtest"


@pytest.fixture(scope="module")
def stand_ins(node: NodeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeEntra, FakeKeyVault]]:
    workdir = tmp_path_factory.mktemp("stand-ins")
    entra = FakeEntra(workdir / "entra", trusted_ca_files=[node.apiserver.ca_file]).start()
    vault = FakeKeyVault(workdir / "vault", authority=entra.authority_host, tenant=TENANT, jwks=entra.jwks,
                         vault_host=VAULT_HOST).start()
    vault.secrets["my-secret"] = SECRET_VALUE
    try:
        yield entra, vault
    finally:
        vault.stop()
        entra.close()


def manifests(image: str, entra: FakeEntra, vault: FakeKeyVault, host_network: bool = True,
              stand_ins_address: str = "127.0.0.1", pull_policy: str = "Never") -> list[dict[str, Any]]:
    objects = [doc for path in sorted((EXAMPLE_DIR / "manifests").glob("*.yaml"))
               for doc in yaml.safe_load_all(path.read_text()) if doc]
    for obj in objects:
        assert obj["metadata"]["namespace"] == NS
        if obj["kind"] == "ServiceAccount":
            assert obj["metadata"]["annotations"]["azure.workload.identity/client-id"] == CLIENT_ID
        if obj["kind"] == "Deployment":
            spec = obj["spec"]["template"]["spec"]
            if host_network:
                spec["hostNetwork"] = True
            spec["hostAliases"] = [{"ip": stand_ins_address, "hostnames": [VAULT_HOST]}]
            [app] = spec["containers"]
            app["image"], app["imagePullPolicy"] = image, pull_policy
            env = {e["name"]: e for e in app["env"]}
            env["KEYVAULT_URL"] = {"name": "KEYVAULT_URL", "value": f"{vault.url}/"}
            env["AZURE_AUTHORITY_HOST"] = {"name": "AZURE_AUTHORITY_HOST", "value": entra.authority_host}
            env["REQUESTS_CA_BUNDLE"] = {"name": "REQUESTS_CA_BUNDLE", "value": f"{CA_DIR}/ca.crt"}
            # Only the workload identity: DefaultAzureCredential would otherwise go on to probe the instance
            # metadata service (a non-local address) when it fails.
            env["AZURE_TOKEN_CREDENTIALS"] = {"name": "AZURE_TOKEN_CREDENTIALS", "value": "WorkloadIdentityCredential"}
            app["env"] = list(env.values())
            app["volumeMounts"] = [{"name": "test-ca", "mountPath": CA_DIR, "readOnly": True}]
            spec["volumes"] = [{"name": "test-ca", "configMap": {"name": "test-ca"}}]
    return objects


@pytest.fixture(scope="module")
def reader(release: Release, node: NodeCluster, example_image: str,
           stand_ins: tuple[FakeEntra, FakeKeyVault]) -> Iterator[Any]:
    """The example deployed (namespace, ConfigMap of the stand-ins' CAs, its ServiceAccount and Deployment)."""
    entra, vault = stand_ins
    node.import_image(example_image)
    entra.register(CLIENT_ID, TENANT, issuer=node.apiserver.issuer, subject=SUBJECT)
    vault.readers.add(CLIENT_ID)
    api = release.api
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    core.create_namespace({"metadata": {"name": NS}})
    try:
        bundle = Path(entra.ca_file).read_text() + Path(vault.ca_file).read_text()
        core.create_namespaced_config_map(NS, {"metadata": {"name": "test-ca"}, "data": {"ca.crt": bundle}})
        for obj in manifests(example_image, entra, vault):
            if obj["kind"] == "ServiceAccount":
                core.create_namespaced_service_account(NS, obj)
            else:
                apps.create_namespaced_deployment(NS, obj)
        yield api
    finally:
        delete_namespace(api, NS)


def running_pod(api: Any) -> Any:
    def find() -> Any:
        pods = client.CoreV1Api(api).list_namespaced_pod(NS, label_selector="app=keyvault-reader").items
        live = [p for p in pods if p.metadata.deletion_timestamp is None and p.status.phase == "Running"]
        return live[0] if len(live) == 1 else None

    return wait_for(find, 120, "one running keyvault-reader pod")


def test_the_app_reads_the_secret_with_the_kubelet_projected_token(reader: Any, node: NodeCluster,
                                                                   stand_ins: tuple[FakeEntra, FakeKeyVault]) -> None:
    entra, _ = stand_ins
    pod = running_pod(reader)
    name = pod.metadata.name
    # The webhook's mutation: env and the projected token volume the kubelet fills.
    [app] = pod.spec.containers
    assert {"AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE"} <= {e.name for e in app.env}
    expected = f"read secret 'my-secret' ({len(SECRET_VALUE)} characters)"
    try:
        wait_for(lambda: expected in logs(reader, NS, name), 90, f"the app's log line {expected!r}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- log\n{logs(reader, NS, name)[-3000:]}\n--- pod\n"
                             f"{describe(reader, NS, name)}\n--- Entra stand-in\n{entra.requests}") from None
    # Entra's stand-in accepted the kubelet's token for this ServiceAccount (verified against the API server's
    # JWKS), and the credential asked for Key Vault.
    ok = [r for r in entra.requests if r.code == "ok" and r.client_id == CLIENT_ID and r.subject == SUBJECT]
    assert ok and "vault" in ok[-1].scope, entra.requests


def test_without_the_role_the_app_gets_403_and_verify_prints_the_fix(
        reader: Any, node: NodeCluster, stand_ins: tuple[FakeEntra, FakeKeyVault]) -> None:
    _, vault = stand_ins
    vault.readers.discard(CLIENT_ID)
    pod = running_pod(reader)
    command = ["wi-webhook", "verify", "--keyvault", f"{vault.url}/", "--secret", "my-secret"]
    out = stream(client.CoreV1Api(reader).connect_get_namespaced_pod_exec, pod.metadata.name, NS,
                 container="app", command=command, stderr=True, stdout=True, stdin=False, tty=False,
                 _request_timeout=120)
    assert "403 Forbidden" in out and "Key Vault Secrets User" in out and "az role assignment create" in out, out
    # The app itself: restarted, it fails with Key Vault's 403 Forbidden (and crash-loops until the role is granted).
    client.CoreV1Api(reader).delete_namespaced_pod(pod.metadata.name, NS, grace_period_seconds=0)

    def forbidden() -> bool:
        pods = client.CoreV1Api(reader).list_namespaced_pod(NS, label_selector="app=keyvault-reader").items
        for p in pods:
            if p.metadata.name == pod.metadata.name or not p.status.container_statuses:
                continue
            for previous in (False, True):
                try:
                    text = client.CoreV1Api(reader).read_namespaced_pod_log(p.metadata.name, NS,
                                                                            previous=previous)
                except client.exceptions.ApiException:
                    continue
                if "(Forbidden)" in text and "Caller is not authorized" in text:  # the SDK's HttpResponseError
                    return True
        return False

    wait_for(forbidden, 120, "the restarted app's 403 in its log")
    vault.readers.add(CLIENT_ID)
