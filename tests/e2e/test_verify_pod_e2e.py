"""`wi-webhook verify --pod` from outside the pod, as a person with a kubeconfig (or a CI job after a deploy) runs it:
the real API server holds pods the webhook injected, the TokenRequest API mints their tokens, and the Entra
stand-in validates those tokens against the API server's keys and the registered federated credentials.

Each classic mistake gives its advice and exit code: a healthy pod (0), a federated credential whose subject does
not match (AADSTS70021, 1), a wrong client id (AADSTS700016, 1), a pod without the opt-in label (1), a stale
identity (1), a missing Key Vault role (1), and a caller who may not create tokens (the permission named, 2).
What only the pod's own file system shows (a token file its user cannot read) is `verify` inside the pod
(tests/e2e/test_verify_e2e.py).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.e2e.fake_entra import FakeEntra
from tests.e2e.fake_keyvault import FakeKeyVault
from tests.processes import WebhookProcess

from .helpers import E2E_LABEL, TENANT, WI, eventually, mutating_webhook

CLIENT = str(uuid.uuid4())


@pytest.fixture(scope="module")
def setup(cluster: Any, fake_entra_server: FakeEntra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The webhook (its cloud's authority is the Entra stand-in), a namespace it serves, and a ServiceAccount."""
    workdir = tmp_path_factory.mktemp("verify-pod")
    cloud = workdir / "cloud.json"
    cloud.write_text(json.dumps({"name": "AzureStackCloud",
                                 "activeDirectoryEndpoint": fake_entra_server.authority_host}))
    webhook = WebhookProcess(workdir, ["--kubeconfig", str(cluster.kubeconfig), "--disable-cert-rotation"],
                             env={"AZURE_TENANT_ID": TENANT, "AZURE_ENVIRONMENT": "AzureStackCloud",
                                  "AZURE_ENVIRONMENT_FILEPATH": str(cloud)})
    api = cluster.api_client()
    core = client.CoreV1Api(api)
    label = uuid.uuid4().hex[:8]
    namespace = f"wi-vpod-{label}"
    core.create_namespace({"metadata": {"name": namespace, "labels": {E2E_LABEL: label}}})
    admission = client.AdmissionregistrationV1Api(api)
    config_name = f"wi-vpod-{label}"
    try:
        webhook.wait_ready(60)
        admission.create_mutating_webhook_configuration({"metadata": {"name": config_name}, "webhooks": [
            mutating_webhook("mutation.azure-workload-identity.io", webhook.url, webhook.ca_file, label)]})
        core.create_namespaced_service_account(namespace, {"metadata": {
            "name": "app", "annotations": {f"{WI}/client-id": CLIENT}}})

        def pod(name: str, labelled: bool = True, sa: str = "app") -> dict[str, Any]:
            body = {"metadata": {"name": name, "labels": {f"{WI}/use": "true"} if labelled else {}},
                    "spec": {"serviceAccountName": sa, "containers": [{"name": "app", "image": "busybox"}]}}
            created: dict[str, Any] = api.sanitize_for_serialization(core.create_namespaced_pod(namespace, body))
            return created

        eventually(lambda: "volumes" in pod(f"probe-{uuid.uuid4().hex[:6]}")["spec"], timeout=30)
        yield {"namespace": namespace, "core": core, "api": api, "pod": pod, "cluster": cluster}
    finally:
        admission.delete_mutating_webhook_configuration(config_name)
        core.delete_namespace(namespace)
        webhook.stop()


@pytest.fixture(autouse=True)
def federated(setup: Any, fake_entra: FakeEntra) -> None:
    """The app's federated credential, as `az identity federated-credential create` makes it (reset per test)."""
    fake_entra.register(CLIENT, TENANT, issuer=setup["cluster"].issuer,
                        subject=f"system:serviceaccount:{setup['namespace']}:app")


def verify(*args: str, fake: FakeEntra, kubeconfig: Path) -> tuple[int, dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "KUBECONFIG"))}
    env["REQUESTS_CA_BUNDLE"] = str(fake.ca_file)
    result = subprocess.run([sys.executable, "-m", "webhook.cli", "verify", "--kubeconfig", str(kubeconfig), *args],
                            env=env, capture_output=True, text=True, timeout=120)
    text = subprocess.run([sys.executable, "-m", "webhook.cli", "verify", "--kubeconfig", str(kubeconfig),
                           *[a for a in args if a not in ("-o", "json")]], env=env, capture_output=True, text=True,
                          timeout=120) if "json" in args else None
    report = json.loads(result.stdout) if result.stdout.startswith("{") else {}
    return result.returncode, report, (text.stdout + text.stderr) if text else result.stdout + result.stderr


def checks(report: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {check["name"]: check for check in report["checks"]}


def test_a_healthy_pod_passes_from_a_laptop(setup: Any, fake_entra: FakeEntra) -> None:
    setup["pod"]("healthy")
    code, report, text = verify("--pod", f"{setup['namespace']}/healthy", "-o", "json", fake=fake_entra,
                                kubeconfig=setup["cluster"].kubeconfig)
    assert code == 0 and report["ok"] and report["exitCode"] == 0, text
    found = checks(report)
    assert [c["status"] for c in report["checks"]] == ["pass"] * len(report["checks"])
    assert list(found) == ["pod", "injection", "identity", "token", "token claims", "token acquisition"]
    subject = f"system:serviceaccount:{setup['namespace']}:app"
    assert f"issuer {setup['cluster'].issuer}, subject {subject}, audience api://AzureADTokenExchange" in \
        found["token"]["detail"] and "az identity federated-credential create" in found["token"]["detail"]
    assert "workload identity OK" in text
    # kubectl's forms: -n NAMESPACE NAME and pod/NAME
    code, _, text = verify("--pod", "pod/healthy", "-n", setup["namespace"], fake=fake_entra,
                           kubeconfig=setup["cluster"].kubeconfig)
    assert code == 0, text


def test_a_federated_credential_for_another_subject(setup: Any, fake_entra: FakeEntra) -> None:
    setup["pod"]("mismatch")
    fake_entra.unregister(CLIENT, TENANT)
    fake_entra.register(CLIENT, TENANT, issuer=setup["cluster"].issuer,
                        subject=f"system:serviceaccount:{setup['namespace']}:other")
    code, report, text = verify("--pod", f"{setup['namespace']}/mismatch", "-o", "json", fake=fake_entra,
                                kubeconfig=setup["cluster"].kubeconfig)
    failed = checks(report)["token acquisition"]
    assert code == 1 and failed["status"] == "fail" and "AADSTS70021" in failed["detail"], text
    assert f"subject system:serviceaccount:{setup['namespace']}:app" in failed["fix"]
    assert "az identity federated-credential create" in failed["fix"]


def test_a_wrong_client_id(setup: Any, fake_entra: FakeEntra) -> None:
    setup["core"].create_namespaced_service_account(setup["namespace"], {"metadata": {
        "name": "typo", "annotations": {f"{WI}/client-id": str(uuid.uuid4())}}})
    setup["pod"]("typo-pod", sa="typo")
    code, report, text = verify("--pod", f"{setup['namespace']}/typo-pod", "-o", "json", fake=fake_entra,
                                kubeconfig=setup["cluster"].kubeconfig)
    failed = checks(report)["token acquisition"]
    assert code == 1 and "AADSTS700016" in failed["detail"] and "client-id" in failed["fix"], text


def test_a_pod_without_the_label_is_not_injected_and_says_why(setup: Any, fake_entra: FakeEntra) -> None:
    setup["pod"]("unlabelled", labelled=False)
    code, report, text = verify("--pod", f"{setup['namespace']}/unlabelled", "-o", "json", fake=fake_entra,
                                kubeconfig=setup["cluster"].kubeconfig)
    failed = checks(report)["injection"]
    assert code == 1 and failed["status"] == "fail" and f'{WI}/use: "true" label' in failed["detail"], text
    assert "pod template" in failed["fix"] and "token" not in checks(report)


def test_a_stale_identity_needs_a_restart(setup: Any, fake_entra: FakeEntra) -> None:
    core, namespace = setup["core"], setup["namespace"]
    core.create_namespaced_service_account(namespace, {"metadata": {
        "name": "moving", "annotations": {f"{WI}/client-id": CLIENT}}})
    setup["pod"]("before-move", sa="moving")
    core.patch_namespaced_service_account("moving", namespace, {"metadata": {"annotations": {
        f"{WI}/client-id": "11111111-2222-3333-4444-555555555555"}}})
    code, report, text = verify("--pod", f"{namespace}/before-move", "-o", "json", fake=fake_entra,
                                kubeconfig=setup["cluster"].kubeconfig)
    failed = checks(report)["identity"]
    assert code == 1 and failed["status"] == "fail", text
    assert f"AZURE_CLIENT_ID='{CLIENT}' (now '11111111-2222-3333-4444-555555555555')" in failed["detail"]
    assert "rollout restart" in failed["fix"]


def test_a_missing_key_vault_role(setup: Any, fake_entra: FakeEntra, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, to give the Key Vault client the one setting a vault on 127.0.0.1 needs (its challenge's
    resource cannot be a parent domain of an IP address); everything else as the command runs it."""
    from azure.keyvault.secrets import SecretClient

    from webhook.cli.verify_pod import parse_target, run_verify_pod
    from webhook.sources.kubeclient import api_client

    setup["pod"]("reader")
    vault = FakeKeyVault(tmp_path, fake_entra.authority_host, TENANT, fake_entra.jwks).start()
    try:
        bundle = tmp_path / "bundle.pem"
        bundle.write_bytes(Path(fake_entra.ca_file).read_bytes() + vault.ca_file.read_bytes())
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
        vault.secrets["db-password"] = "s3cret"

        def factory(url: str, credential: Any) -> Any:
            return SecretClient(vault_url=url, credential=credential, verify_challenge_resource=False)

        kubeconfig = str(setup["cluster"].kubeconfig)
        report = run_verify_pod(api_client(kubeconfig), kubeconfig, parse_target(f"{setup['namespace']}/reader", ""),
                                "https://management.azure.com/.default", vault.url, "db-password",
                                keyvault_client_factory=factory)
    finally:
        vault.stop()
    [probe] = [c for c in report.checks if c.name == "key vault"]
    assert report.token_obtained and report.exit_code() == 1
    assert probe.status == "fail" and "403" in probe.detail and "Key Vault Secrets User" in probe.fix
    assert CLIENT in probe.fix


def test_a_caller_who_may_not_create_tokens_is_told_which_permission(setup: Any, fake_entra: FakeEntra,
                                                                      tmp_path: Path) -> None:
    """A user who may read pods and ServiceAccounts but not create tokens: the checks that need no token run, the
    token check names the missing permission, and the exit code says the diagnosis is incomplete (2)."""
    core, namespace, cluster = setup["core"], setup["namespace"], setup["cluster"]
    setup["pod"]("limited")
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "viewer"}})
    rbac = client.RbacAuthorizationV1Api(setup["api"])
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "viewer"}, "rules": [
        {"apiGroups": [""], "resources": ["pods", "serviceaccounts"], "verbs": ["get", "list"]}]})
    rbac.create_namespaced_role_binding(namespace, {"metadata": {"name": "viewer"},
                                                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                                                                "kind": "Role", "name": "viewer"},
                                                    "subjects": [{"kind": "ServiceAccount", "name": "viewer",
                                                                  "namespace": namespace}]})
    token = core.create_namespaced_service_account_token("viewer", namespace, {"spec": {
        "expirationSeconds": 3600}}).status.token
    kubeconfig = tmp_path / "viewer.kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "viewer",
        "clusters": [{"name": "e2e", "cluster": {"server": cluster.url, "certificate-authority-data":
                                                  base64.b64encode(Path(cluster.ca_file).read_bytes()).decode()}}],
        "users": [{"name": "viewer", "user": {"token": token}}],
        "contexts": [{"name": "viewer", "context": {"cluster": "e2e", "user": "viewer"}}]}))
    code, report, text = verify("--pod", f"{namespace}/limited", "-o", "json", fake=fake_entra,
                                kubeconfig=kubeconfig)
    found = checks(report)
    assert code == 2 and report["exitCode"] == 2, text
    assert [found[name]["status"] for name in ("pod", "injection", "identity")] == ["pass"] * 3
    assert found["token"]["status"] == "skip" and "serviceaccounts/token" in found["token"]["fix"]
    assert f"create a token for ServiceAccount {namespace}/app" in found["token"]["detail"]
    assert "token acquisition" not in found
    assert "fix: grant the kubeconfig's user `create` on `serviceaccounts/token`" in text


def test_a_deployment_resolves_to_one_of_its_pods(setup: Any, fake_entra: FakeEntra) -> None:
    """`deploy/NAME` as kubectl users type it: its selector's pods (here made by hand: no controller-manager)."""
    apps = client.AppsV1Api(setup["api"])
    namespace = setup["namespace"]
    apps.create_namespaced_deployment(namespace, {"metadata": {"name": "web"}, "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web", f"{WI}/use": "true"}},
                     "spec": {"serviceAccountName": "app", "containers": [{"name": "app", "image": "busybox"}]}}}})
    setup["core"].create_namespaced_pod(namespace, {"metadata": {"name": "web-1", "labels": {
        "app": "web", f"{WI}/use": "true"}}, "spec": {"serviceAccountName": "app",
                                                      "containers": [{"name": "app", "image": "busybox"}]}})
    code, report, text = verify("--pod", "deploy/web", "-n", namespace, "-o", "json", fake=fake_entra,
                                kubeconfig=setup["cluster"].kubeconfig)
    assert code == 0 and checks(report)["pod"]["detail"].startswith(f"{namespace}/web-1"), text
    code, _, text = verify("--pod", "deploy/nothing", "-n", namespace, fake=fake_entra,
                           kubeconfig=setup["cluster"].kubeconfig)
    assert code == 2 and "Deployment" in text and "not found" in text


def test_a_pod_that_does_not_exist_could_not_be_diagnosed(setup: Any, fake_entra: FakeEntra) -> None:
    code, _, text = verify("--pod", f"{setup['namespace']}/does-not-exist", fake=fake_entra,
                           kubeconfig=setup["cluster"].kubeconfig)
    assert code == 2 and f"pod {setup['namespace']}/does-not-exist not found" in text and "Traceback" not in text
