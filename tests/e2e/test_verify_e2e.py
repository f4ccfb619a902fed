"""`wi-webhook verify` against real TokenRequest tokens from the test API server and the Entra-like endpoint:
the success path, each Entra error mapped to its advice, unreadable/missing files, and the Key Vault probe."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.e2e.fake_entra import FakeEntra
from tests.e2e.fake_keyvault import FakeKeyVault
from webhook.cli.verify import run_verify

TENANT = str(uuid.uuid4())


@pytest.fixture(scope="module")
def workload(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    namespace = f"wi-verify-{uuid.uuid4().hex[:6]}"
    cluster.create_namespace(namespace)
    core = client.CoreV1Api(cluster.api_client())
    client_id = str(uuid.uuid4())
    core.create_namespaced_service_account(namespace, {"metadata": {
        "name": "app", "annotations": {"azure.workload.identity/client-id": client_id}}})
    token = core.create_namespaced_service_account_token("app", namespace, {"spec": {
        "audiences": ["api://AzureADTokenExchange"], "expirationSeconds": 3600}}).status.token
    root = tmp_path_factory.mktemp("verify")
    token_file = root / "azure-identity-token"
    token_file.write_text(token)
    subject = f"system:serviceaccount:{namespace}:app"
    env = {"AZURE_CLIENT_ID": client_id, "AZURE_TENANT_ID": TENANT, "AZURE_FEDERATED_TOKEN_FILE": str(token_file),
           "AZURE_AUTHORITY_HOST": ""}
    return {"env": env, "subject": subject, "issuer": cluster.issuer, "root": root, "token": token}


@pytest.fixture(autouse=True)
def registered(workload: dict[str, Any], fake_entra: FakeEntra) -> None:
    """The federated credential for the workload (the `fake_entra` fixture resets registrations per test)."""
    workload["env"]["AZURE_AUTHORITY_HOST"] = fake_entra.authority_host
    fake_entra.register(workload["env"]["AZURE_CLIENT_ID"], TENANT, issuer=workload["issuer"],
                        subject=workload["subject"])


def verify(env: dict[str, str], *args: str, ca: str) -> tuple[int, str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
    full.update(env, REQUESTS_CA_BUNDLE=ca)
    result = subprocess.run([sys.executable, "-m", "webhook.cli", "verify", *args], env=full, capture_output=True,
                            text=True, timeout=60)
    return result.returncode, result.stdout + result.stderr


def as_user(uid: int, action: Callable[[], Any]) -> dict[str, Any]:
    """Run `action` in a forked child that dropped to `uid` (the interpreter under /root stays loaded)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        try:
            os.setgid(uid)
            os.setuid(uid)
            report = action()
            last = [c for c in report.checks if c.status == "fail"][-1]
            data = {"ok": report.ok, "detail": last.detail, "fix": last.fix}
        except BaseException as exc:
            data = {"ok": False, "detail": f"child failed: {exc!r}", "fix": ""}
        os.write(write, json.dumps(data).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        payload = pipe.read()
    os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(payload)
    return result


def test_success(workload: dict[str, Any], fake_entra: FakeEntra) -> None:
    code, out = verify(workload["env"], ca=str(fake_entra.ca_file))
    assert code == 0, out
    assert "[PASS] token acquisition" in out and "workload identity OK" in out
    assert f"subject {workload['subject']}" in out and "audience api://AzureADTokenExchange" in out
    code, out = verify(workload["env"], "-o", "json", ca=str(fake_entra.ca_file))
    report = json.loads(out)
    assert code == 0 and report["ok"] and [c["status"] for c in report["checks"]] == ["pass"] * 4


def test_no_matching_federated_credential_prints_the_exact_issuer_and_subject(
        workload: dict[str, Any], fake_entra: FakeEntra, cluster: Any) -> None:
    other = str(uuid.uuid4())
    fake_entra.register(other, TENANT, issuer=cluster.issuer, subject="system:serviceaccount:elsewhere:app")
    code, out = verify({**workload["env"], "AZURE_CLIENT_ID": other}, ca=str(fake_entra.ca_file))
    assert code == 1 and "AADSTS70021" in out
    assert f"issuer {workload['issuer']} and subject {workload['subject']}" in out
    assert f"az identity federated-credential create --name <name> --identity-name <identity> " \
           f"--resource-group <resource-group> --issuer {workload['issuer']} --subject {workload['subject']} " \
           "--audience api://AzureADTokenExchange" in out


@pytest.mark.parametrize(("change", "forced", "expected"), [
    ({"AZURE_CLIENT_ID": "11111111-2222-3333-4444-555555555555"}, None, "client id (az identity show"),
    ({"AZURE_TENANT_ID": "99999999-2222-3333-4444-555555555555"}, None, "tenant 99999999-2222-3333-4444-5555555555"),
    ({}, "AADSTS700024", "clock"),
    ({}, "AADSTS50166", "OIDC issuer"),
])
def test_entra_errors_map_to_advice(workload: dict[str, Any], fake_entra: FakeEntra, change: dict[str, str],
                                    forced: str | None, expected: str) -> None:
    if forced:
        fake_entra.force_error(forced)
    code, out = verify({**workload["env"], **change}, ca=str(fake_entra.ca_file))
    assert code == 1 and "[FAIL] token acquisition" in out and expected in out, out


def test_unreachable_authority(workload: dict[str, Any], fake_entra: FakeEntra) -> None:
    from tests.processes import free_port

    code, out = verify({**workload["env"], "AZURE_AUTHORITY_HOST": f"https://127.0.0.1:{free_port()}/"},
                       ca=str(fake_entra.ca_file))
    assert code == 1 and "could not be reached" in out


def test_missing_env_and_unreadable_or_missing_token(workload: dict[str, Any], fake_entra: FakeEntra,
                                                     tmp_path: Path) -> None:
    env = dict(workload["env"])
    del env["AZURE_CLIENT_ID"]
    code, out = verify(env, ca=str(fake_entra.ca_file))
    assert code == 1 and "missing: AZURE_CLIENT_ID" in out and "pod template" in out
    code, out = verify({**workload["env"], "AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "nope")},
                       ca=str(fake_entra.ca_file))
    assert code == 1 and "does not exist" in out
    shared = Path(tempfile.mkdtemp(prefix="wi-verify-"))
    try:
        shared.chmod(0o755)
        private = shared / "private-token"
        private.write_text(workload["token"])
        private.chmod(0o600)  # root-owned, like a projected token without fsGroup seen by a non-root container
        report = as_user(65534, lambda: run_verify({**workload["env"], "AZURE_FEDERATED_TOKEN_FILE": str(private)}))
    finally:
        shutil.rmtree(shared)
    assert not report["ok"] and "not readable by uid 65534" in report["detail"] and "fsGroup" in report["fix"]


def test_expired_token_claims(workload: dict[str, Any], fake_entra: FakeEntra, tmp_path: Path) -> None:
    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    stale = tmp_path / "stale-token"
    claims = {"iss": "x", "sub": "y", "aud": ["api://AzureADTokenExchange"], "exp": 1}
    stale.write_text(f"{b64({'alg': 'RS256'})}.{b64(claims)}.sig")
    code, out = verify({**workload["env"], "AZURE_FEDERATED_TOKEN_FILE": str(stale)}, ca=str(fake_entra.ca_file))
    assert code == 1 and "[FAIL] token claims" in out and "expired" in out


def test_keyvault_probe_explains_the_missing_role_assignment(workload: dict[str, Any], fake_entra: FakeEntra,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    from azure.keyvault.secrets import SecretClient

    vault = FakeKeyVault(tmp_path, fake_entra.authority_host, TENANT, fake_entra.jwks).start()
    try:
        bundle = tmp_path / "bundle.pem"
        bundle.write_bytes(Path(fake_entra.ca_file).read_bytes() + vault.ca_file.read_bytes())
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
        vault.secrets["db-password"] = "s3cret"

        def factory(url: str, credential: Any) -> Any:
            # 127.0.0.1 cannot be a subdomain of the challenge's resource, so the domain check is off here only.
            return SecretClient(vault_url=url, credential=credential, verify_challenge_resource=False)

        report = run_verify(workload["env"], keyvault=vault.url, secret="db-password",
                            keyvault_client_factory=factory)
        [probe] = [c for c in report.checks if c.name == "key vault"]
        assert probe.status == "fail" and "403 Forbidden" in probe.detail
        assert "Key Vault Secrets User" in probe.fix and workload["env"]["AZURE_CLIENT_ID"] in probe.fix
        assert report.token_obtained and not report.ok
        vault.readers.add(workload["env"]["AZURE_CLIENT_ID"])
        report = run_verify(workload["env"], keyvault=vault.url, secret="db-password",
                            keyvault_client_factory=factory)
        assert report.ok and report.checks[-1].status == "pass"
        report = run_verify(workload["env"], keyvault=vault.url, secret="missing", keyvault_client_factory=factory)
        assert "not found" in report.checks[-1].detail
    finally:
        vault.stop()
