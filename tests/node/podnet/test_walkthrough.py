"""The seed article's walkthrough on the pod network: examples/keyvault-reader's image pulled from the registry, its
own manifests (no hostNetwork), the chart installed with its defaults. The app reads its kubelet-projected token
and exchanges it at the Entra stand-in, which listens on the node's address inside the test network namespace and
verifies the token against the API server's keys; then it reads a secret from the Key Vault stand-in there.

From outside the pod (the test process, as a person at a laptop): `wi-webhook verify --pod` diagnoses the running
pod, and names the missing Key Vault role once the role is taken away.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.e2e.fake_entra import FakeEntra
from tests.e2e.fake_keyvault import FakeKeyVault
from tests.node.kube import delete_namespace, describe, logs, wait_for
from tests.node.podnet.conftest import Helm
from tests.node.podnetwork import NODE_IP, PodNetworkCluster
from tests.node.release import CLIENT_ID, TENANT
from tests.node.test_node_walkthrough import NS, SECRET_VALUE, SUBJECT, VAULT_HOST, manifests, running_pod

CHART = Path(__file__).resolve().parents[3] / "charts" / "workload-identity-webhook"
RELEASE, RELEASE_NS = "wi-walkthrough", "azure-workload-identity-system"


@pytest.fixture(scope="module")
def stand_ins(podnet: PodNetworkCluster, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[FakeEntra, FakeKeyVault]]:
    """Entra ID and Key Vault stand-ins on the node's address in the netns: the pods reach them through their
    default gateway, and nothing outside the namespace can."""
    workdir = tmp_path_factory.mktemp("podnet-stand-ins")
    entra = FakeEntra(workdir / "entra", trusted_ca_files=[podnet.apiserver.ca_file], host=NODE_IP).start()
    vault = FakeKeyVault(workdir / "vault", authority=entra.authority_host, tenant=TENANT, jwks=entra.jwks,
                         vault_host=VAULT_HOST, address=NODE_IP).start()
    vault.secrets["my-secret"] = SECRET_VALUE
    try:
        yield entra, vault
    finally:
        vault.stop()
        entra.close()


@pytest.fixture(scope="module")
def reader(podnet: PodNetworkCluster, helm: Helm, webhook_image: str, example_image: str,
           stand_ins: tuple[FakeEntra, FakeKeyVault]) -> Iterator[Any]:
    entra, vault = stand_ins
    webhook = podnet.push(webhook_image, "workload-identity-webhook:walkthrough")
    app_image = podnet.push(example_image, "keyvault-reader:walkthrough")
    helm("install", RELEASE, str(CHART), "--namespace", RELEASE_NS, "--create-namespace", "--wait", "--timeout",
         "180s", "--set", f"azureTenantID={TENANT}", "--set", f"image.repository={webhook.rsplit(':', 1)[0]}",
         "--set", "image.tag=walkthrough")
    entra.register(CLIENT_ID, TENANT, issuer=podnet.apiserver.issuer, subject=SUBJECT)
    vault.readers.add(CLIENT_ID)
    api = podnet.api_client()
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    core.create_namespace({"metadata": {"name": NS}})
    try:
        bundle = Path(entra.ca_file).read_text() + Path(vault.ca_file).read_text()
        core.create_namespaced_config_map(NS, {"metadata": {"name": "test-ca"}, "data": {"ca.crt": bundle}})
        for obj in manifests(app_image, entra, vault, host_network=False, stand_ins_address=NODE_IP,
                             pull_policy="IfNotPresent"):
            if obj["kind"] == "ServiceAccount":
                core.create_namespaced_service_account(NS, obj)
            else:
                apps.create_namespaced_deployment(NS, obj)
        yield api
    finally:
        delete_namespace(api, NS)
        helm("uninstall", RELEASE, "--namespace", RELEASE_NS, "--wait", "--timeout", "120s", check=False)


def test_the_app_on_the_pod_network_reads_the_secret(reader: Any, stand_ins: tuple[FakeEntra, FakeKeyVault]) -> None:
    entra, _ = stand_ins
    pod = running_pod(reader)
    assert not pod.spec.host_network and pod.status.pod_ip.startswith("10.244.0.")
    expected = f"read secret 'my-secret' ({len(SECRET_VALUE)} characters)"
    try:
        wait_for(lambda: expected in logs(reader, NS, pod.metadata.name), 90, f"the app's log line {expected!r}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- log\n{logs(reader, NS, pod.metadata.name)[-3000:]}\n--- pod\n"
                             f"{describe(reader, NS, pod.metadata.name)}\n--- Entra\n{entra.requests}") from None
    ok = [r for r in entra.requests if r.code == "ok" and r.client_id == CLIENT_ID and r.subject == SUBJECT]
    assert ok and "vault" in ok[-1].scope, entra.requests


def test_verify_pod_from_outside_names_the_missing_role(reader: Any, podnet: PodNetworkCluster,
                                                        stand_ins: tuple[FakeEntra, FakeKeyVault],
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    """`verify --pod` as a person at a laptop runs it (here the test process, in the cluster's network): healthy,
    then, with the role taken away, the Key Vault check fails naming the role assignment to create."""
    from azure.keyvault.secrets import SecretClient

    from webhook.cli.verify_pod import parse_target, run_verify_pod
    from webhook.sources.kubeclient import api_client

    entra, vault = stand_ins
    bundle = tmp_path / "ca.pem"
    bundle.write_text(Path(entra.ca_file).read_text() + Path(vault.ca_file).read_text())
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    pod = running_pod(reader)
    kubeconfig = str(podnet.apiserver.kubeconfig)
    target = parse_target(f"{NS}/{pod.metadata.name}", "")

    def factory(url: str, credential: Any) -> Any:
        # The vault's name resolves only in the pod (hostAliases): from outside, its address with the domain check
        # off, as the e2e test of verify does.
        return SecretClient(vault_url=url, credential=credential, verify_challenge_resource=False)

    vault_url = f"https://{NODE_IP}:{vault.url.rsplit(':', 1)[1]}/"
    report = run_verify_pod(api_client(kubeconfig), kubeconfig, target, "https://vault.azure.net/.default",
                            vault_url, "my-secret", keyvault_client_factory=factory)
    assert report.exit_code() == 0, [(c.name, c.status, c.detail, c.fix) for c in report.checks]
    vault.readers.discard(CLIENT_ID)
    try:
        report = run_verify_pod(api_client(kubeconfig), kubeconfig, target, "https://vault.azure.net/.default",
                                vault_url, "my-secret", keyvault_client_factory=factory)
    finally:
        vault.readers.add(CLIENT_ID)
    [probe] = [c for c in report.checks if c.name == "key vault"]
    assert report.exit_code() == 1 and probe.status == "fail" and "Key Vault Secrets User" in probe.fix
