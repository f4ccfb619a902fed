"""The e2e harness itself: a real kube-apiserver issues service-account tokens that the fake Entra ID
verifies against the apiserver's OIDC discovery, through the real azure-identity WorkloadIdentityCredential."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import WorkloadIdentityCredential
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from kubernetes import client

from .cluster import KUBE_VERSION, TestCluster
from .fake_entra import AZURE_TOKEN_AUDIENCE, ERRORS, JWT_BEARER, FakeEntra

CLIENT_ID_ANNOTATION = "azure.workload.identity/client-id"
ARM_SCOPE = "https://management.azure.com/.default"


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _make_sa(cluster: TestCluster, namespace: str, name: str, client_id: str) -> None:
    with cluster.api_client() as api:
        client.CoreV1Api(api).create_namespaced_service_account(
            namespace,
            client.V1ServiceAccount(
                metadata=client.V1ObjectMeta(name=name, annotations={CLIENT_ID_ANNOTATION: client_id})
            ),
        )


def _sa_token(cluster: TestCluster, namespace: str, name: str, audience: str = AZURE_TOKEN_AUDIENCE) -> str:
    with cluster.api_client() as api:
        resp = client.CoreV1Api(api).create_namespaced_service_account_token(
            name,
            namespace,
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[audience], expiration_seconds=3600)
            ),
        )
    assert resp.status is not None
    return str(resp.status.token)


def _write(tmp_path: Path, token: str) -> str:
    path = tmp_path / f"token-{uuid.uuid4().hex[:6]}"
    path.write_text(token)
    return str(path)


def _post_token(fake: FakeEntra, tenant: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """A raw client-credentials POST (no azure-core retries), for the error-mapping checks."""
    ctx = ssl.create_default_context(cafile=str(fake.ca_file))
    req = urllib.request.Request(
        f"{fake.authority_host}{tenant}/oauth2/v2.0/token",
        data=urllib.parse.urlencode(form).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


@pytest.fixture
def namespace(cluster: TestCluster) -> str:
    name = _name("e2e")
    cluster.create_namespace(name)
    return name


def test_apiserver_reports_pinned_version(cluster: TestCluster) -> None:
    assert cluster.version == KUBE_VERSION
    with cluster.api_client() as api:
        info = client.VersionApi(api).get_code()
    assert info.git_version == KUBE_VERSION
    assert (f"v{info.major}.{info.minor}.") in KUBE_VERSION + "."


def test_namespace_has_default_service_account(cluster: TestCluster, namespace: str) -> None:
    with cluster.api_client() as api:
        sa = client.CoreV1Api(api).read_namespaced_service_account("default", namespace)
    assert sa.metadata is not None and sa.metadata.name == "default"


def test_oidc_discovery_is_anonymous_and_matches_issuer(cluster: TestCluster) -> None:
    ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
    with urllib.request.urlopen(f"{cluster.url}/.well-known/openid-configuration", timeout=5, context=ctx) as r:
        config = json.loads(r.read())
    assert config["issuer"] == cluster.issuer
    assert config["jwks_uri"] == f"{cluster.issuer}/openid/v1/jwks"
    with urllib.request.urlopen(config["jwks_uri"], timeout=5, context=ctx) as r:
        keys = json.loads(r.read())["keys"]
    assert keys and keys[0]["kty"] == "RSA"


def test_token_request_accepted_by_fake_entra_via_workload_identity_credential(
    cluster: TestCluster, fake_entra: FakeEntra, namespace: str, tmp_path: Path
) -> None:
    tenant_id, client_id = str(uuid.uuid4()), str(uuid.uuid4())
    _make_sa(cluster, namespace, "workload", client_id)
    token = _sa_token(cluster, namespace, "workload")
    claims = jwt.decode(token, options={"verify_signature": False})
    subject = f"system:serviceaccount:{namespace}:workload"
    assert claims["iss"] == cluster.issuer
    assert claims["sub"] == subject
    assert AZURE_TOKEN_AUDIENCE in claims["aud"]

    fake_entra.register(client_id, tenant_id, issuer=cluster.issuer, subject=subject)
    cred = WorkloadIdentityCredential(tenant_id=tenant_id, client_id=client_id, token_file_path=_write(tmp_path, token))
    access = cred.get_token("https://management.azure.com/.default")

    assert access.expires_on > time.time() + 3000
    issued = jwt.decode(
        access.token,
        key=jwt.PyJWKSet.from_dict(fake_entra.jwks()).keys[0].key,
        algorithms=["RS256"],
        audience="https://management.azure.com",
    )
    assert issued["appid"] == client_id and issued["tid"] == tenant_id
    assert [r.code for r in fake_entra.requests] == ["ok"]
    assert fake_entra.requests[0].subject == subject


def test_fake_entra_rejects_token_of_another_service_account(
    cluster: TestCluster, fake_entra: FakeEntra, namespace: str, tmp_path: Path
) -> None:
    tenant_id, client_id = str(uuid.uuid4()), str(uuid.uuid4())
    _make_sa(cluster, namespace, "allowed", client_id)
    _make_sa(cluster, namespace, "intruder", client_id)
    fake_entra.register(client_id, tenant_id, cluster.issuer, f"system:serviceaccount:{namespace}:allowed")

    token = _sa_token(cluster, namespace, "intruder")
    cred = WorkloadIdentityCredential(tenant_id=tenant_id, client_id=client_id, token_file_path=_write(tmp_path, token))
    with pytest.raises(ClientAuthenticationError) as err:
        cred.get_token(ARM_SCOPE)
    message = str(err.value)
    assert "AADSTS70021" in message
    assert f"Assertion Subject: 'system:serviceaccount:{namespace}:intruder'" in message
    assert f"Assertion Issuer: '{cluster.issuer}'" in message
    assert [r.code for r in fake_entra.requests] == ["AADSTS70021"]


def test_fake_entra_error_mapping(cluster: TestCluster, fake_entra: FakeEntra, namespace: str, tmp_path: Path) -> None:
    tenant_id, client_id = str(uuid.uuid4()), str(uuid.uuid4())
    subject = f"system:serviceaccount:{namespace}:workload"
    _make_sa(cluster, namespace, "workload", client_id)
    fake_entra.register(client_id, tenant_id, cluster.issuer, subject)
    token = _sa_token(cluster, namespace, "workload")

    def form(assertion: str = token, cid: str = client_id) -> dict[str, str]:
        return {
            "client_assertion": assertion,
            "client_assertion_type": JWT_BEARER,
            "client_id": cid,
            "grant_type": "client_credentials",
            "scope": ARM_SCOPE,
        }

    def code_of(status_body: tuple[int, dict[str, Any]]) -> tuple[int, str]:
        status, body = status_body
        return status, body.get("error_description", "ok").split(":")[0]

    assert code_of(_post_token(fake_entra, tenant_id, form())) == (200, "ok")
    assert code_of(_post_token(fake_entra, tenant_id, form(cid=str(uuid.uuid4())))) == (400, "AADSTS700016")
    assert code_of(_post_token(fake_entra, str(uuid.uuid4()), form())) == (400, "AADSTS90002")
    other_aud = _sa_token(cluster, namespace, "workload", audience=cluster.issuer)
    assert code_of(_post_token(fake_entra, tenant_id, form(other_aud))) == (400, "AADSTS70021")

    # Signed with the cluster's real service-account key, but already expired.
    sa_key = load_pem_private_key(cluster.sa_key_file.read_bytes(), password=None)
    kid = jwt.get_unverified_header(token)["kid"]
    now = int(time.time())
    claims = {"iss": cluster.issuer, "sub": subject, "aud": [AZURE_TOKEN_AUDIENCE], "iat": now - 7200}
    expired = jwt.encode({**claims, "exp": now - 60}, sa_key, algorithm="RS256", headers={"kid": kid})  # type: ignore[arg-type]
    assert code_of(_post_token(fake_entra, tenant_id, form(expired))) == (401, "AADSTS700024")

    # Right claims, wrong signing key.
    forged_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode({**claims, "exp": now + 600}, forged_key, algorithm="RS256", headers={"kid": kid})
    assert code_of(_post_token(fake_entra, tenant_id, form(forged))) == (401, "AADSTS50013")
    assert code_of(_post_token(fake_entra, tenant_id, form("not-a-jwt"))) == (400, "AADSTS50027")

    for code, spec in ERRORS.items():
        fake_entra.force_error(code, count=1)
        assert code_of(_post_token(fake_entra, tenant_id, form())) == (spec.status, code)
    assert code_of(_post_token(fake_entra, tenant_id, form())) == (200, "ok")

    fake_entra.force_error("AADSTS700024")
    cred = WorkloadIdentityCredential(tenant_id=tenant_id, client_id=client_id, token_file_path=_write(tmp_path, token))
    with pytest.raises(ClientAuthenticationError, match="AADSTS700024"):
        cred.get_token(ARM_SCOPE)
    assert code_of(_post_token(fake_entra, tenant_id, form())) == (401, "AADSTS700024")
    fake_entra.force_error(None)
    assert code_of(_post_token(fake_entra, tenant_id, form())) == (200, "ok")


def test_restart_apiserver_on_same_port(cluster: TestCluster, namespace: str) -> None:
    url, port = cluster.url, cluster.port
    old_pid = cluster.apiserver.pid
    cluster.stop_apiserver()
    assert not cluster.apiserver.running()
    with pytest.raises(OSError):
        urllib.request.urlopen(
            f"{url}/readyz", timeout=2, context=ssl.create_default_context(cafile=str(cluster.ca_file))
        )

    t0 = time.monotonic()
    cluster.start_apiserver()
    assert time.monotonic() - t0 < 30
    assert (cluster.url, cluster.port) == (url, port)
    assert cluster.apiserver.pid != old_pid
    with cluster.api_client() as api:
        ns = client.CoreV1Api(api).read_namespace(namespace)
        assert ns.metadata is not None and ns.metadata.name == namespace  # etcd kept the data
        assert client.VersionApi(api).get_code().git_version == KUBE_VERSION
