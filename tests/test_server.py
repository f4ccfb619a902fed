"""`wi-webhook serve` over real TLS on 127.0.0.1, driven by a real HTTPS client from the test process."""

from __future__ import annotations

import base64
import copy
import shutil
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import orjson
import pytest
from cryptography import x509

from tests.processes import WebhookProcess, make_certs
from tests.support import env_names, pod, validate

SA_MANIFEST = """
apiVersion: v1
kind: ServiceAccount
metadata:
  name: sa
  namespace: ns
  annotations: {azure.workload.identity/client-id: "00000000-1111-2222-3333-444444444444"}
"""


def review(obj: Any, version: str = "admission.k8s.io/v1", uid: str = "uid-1") -> bytes:
    return orjson.dumps({"apiVersion": version, "kind": "AdmissionReview",
                         "request": {"uid": uid, "namespace": "ns", "operation": "CREATE", "object": obj}})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookProcess]:
    workdir = tmp_path_factory.mktemp("server")
    (workdir / "sa.yaml").write_text(SA_MANIFEST)
    process = WebhookProcess(workdir, ["--objects", str(workdir / "sa.yaml"), "--max-request-bytes", "4194304",
                                       "--log-level", "info"])
    try:
        process.wait_ready()
        yield process
    finally:
        assert process.stop() == 0, process.logs()[-2000:]


@pytest.mark.parametrize("version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_round_trip(server: WebhookProcess, version: str) -> None:
    original = pod()
    status, body = server.post(review(original, version, uid=f"uid-{version}"))
    assert status == 200
    answer = orjson.loads(body)
    assert answer["apiVersion"] == version and answer["response"]["uid"] == f"uid-{version}"
    patch = orjson.loads(base64.b64decode(answer["response"]["patch"]))
    out = jsonpatch.apply_patch(copy.deepcopy(original), patch)
    validate(out)
    assert env_names(out["spec"]["containers"][0])[0] == "AZURE_CLIENT_ID"


def test_denial_for_missing_service_account(server: WebhookProcess) -> None:
    status, body = server.post(review(pod(sa_name="ghost")))
    response = orjson.loads(body)["response"]
    assert status == 200 and response["allowed"] is False
    assert response["status"] == {"code": 400, "message": 'serviceaccounts "ghost" not found',
                                  "reason": "ServiceAccountNotFound"}


def test_three_mib_pod_is_admitted(server: WebhookProcess) -> None:
    big = pod(containers=[{"name": "app", "image": "x",
                           "env": [{"name": f"V{i}", "value": "x" * 1024} for i in range(3 * 1024)]}])
    body = review(big)
    assert len(body) > 3 * 1024 * 1024
    status, answer = server.post(body)
    assert status == 200 and orjson.loads(answer)["response"]["allowed"] is True


def test_oversized_body_gets_413_and_server_stays_healthy(server: WebhookProcess) -> None:
    status, body = server.post(b"{" + b" " * (5 * 1024 * 1024) + b"}")
    assert status == 413 and b"--max-request-bytes" in body
    assert server.post(review(pod()))[0] == 200


@pytest.mark.parametrize(("body", "message"), [
    (b"not json", b"not valid JSON"),
    (b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":""}}', b"uid"),
    (b"", b"not valid JSON"),
])
def test_malformed_bodies_get_400_with_message(server: WebhookProcess, body: bytes, message: bytes) -> None:
    status, answer = server.post(body)
    assert status == 400 and message in answer and b"Traceback" not in answer


@pytest.mark.parametrize("content_type", ["text/plain", "application/jsonx", "application/json-patch+json"])
def test_wrong_content_type_gets_415(server: WebhookProcess, content_type: str) -> None:
    status, answer = server.post(review(pod()), content_type=content_type)
    assert status == 415 and b"application/json" in answer


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
def test_json_content_type_with_parameters_or_case_accepted(server: WebhookProcess, content_type: str) -> None:
    """The header is compared as sent first (what the API server sends), then parsed as a media type."""
    status, answer = server.post(review(pod()), content_type=content_type)
    assert status == 200 and orjson.loads(answer)["response"]["allowed"] is True


def test_keep_alive_connection_serves_many_reviews(server: WebhookProcess) -> None:
    conn = server.connection()
    try:
        for i in range(20):
            status, body = server.post(review(pod(), uid=f"k{i}"), conn=conn)
            assert status == 200 and orjson.loads(body)["response"]["uid"] == f"k{i}"
    finally:
        conn.close()


def test_health_ready_and_metrics(server: WebhookProcess) -> None:
    assert server.get(server.health_port, "/healthz") == (200, "ok")
    status, text = server.get(server.health_port, "/readyz")
    assert status == 200 and "ServiceAccounts loaded" in text
    status, metrics = server.get(server.metrics_port, "/metrics")
    assert status == 200
    assert 'wi_webhook_admission_requests_total{decision="mutated",namespace="ns"}' in metrics
    assert 'wi_webhook_admission_requests_total{decision="denied",namespace="ns"}' in metrics
    assert 'azwi_mutation_request_bucket{le="0.001",namespace="ns",service_name="webhook"}' in metrics


def test_tls_minimum_version_enforced(server: WebhookProcess) -> None:
    context = server.ssl_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, pytest.raises(ssl.SSLError):
        context.wrap_socket(raw, server_hostname="127.0.0.1")


def _served_serial(port: int, cafile: Path) -> int:
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_certificate_replaced_while_serving(tmp_path: Path) -> None:
    (tmp_path / "sa.yaml").write_text(SA_MANIFEST)
    with WebhookProcess(tmp_path, ["--objects", str(tmp_path / "sa.yaml")]) as process:
        process.wait_ready()
        before = _served_serial(process.port, process.ca_file)
        conn = process.connection()
        assert process.post(review(pod()), conn=conn)[0] == 200
        fresh = tmp_path / "fresh"
        make_certs(fresh)
        for name in ("tls.crt", "tls.key"):  # replace the key pair (a new CA too)
            shutil.copy(fresh / name, process.cert_dir / f".{name}.new")
            (process.cert_dir / f".{name}.new").replace(process.cert_dir / name)
        deadline = time.monotonic() + 10
        after = before
        while after == before and time.monotonic() < deadline:
            time.sleep(0.2)
            after = _served_serial(process.port, fresh / "ca.crt") if _verifies(process.port, fresh) else before
        assert after != before, process.logs()
        # The open keep-alive connection keeps working; new handshakes present the new certificate.
        assert process.post(review(pod()), conn=conn)[0] == 200
        conn.close()


def _verifies(port: int, cert_dir: Path) -> bool:
    try:
        _served_serial(port, cert_dir / "ca.crt")
        return True
    except ssl.SSLError:
        return False


def test_sigterm_exits_cleanly(tmp_path: Path) -> None:
    (tmp_path / "sa.yaml").write_text(SA_MANIFEST)
    process = WebhookProcess(tmp_path, ["--objects", str(tmp_path / "sa.yaml"), "--shutdown-timeout", "5"])
    process.wait_ready()
    started = time.monotonic()
    assert process.stop() == 0
    assert time.monotonic() - started < 10


def test_startup_error_names_the_setting(tmp_path: Path) -> None:
    process = WebhookProcess(tmp_path, ["--objects", "/nope.yaml"])
    assert process.proc.wait(30) == 2
    process.stop()
    assert "/nope.yaml: no such file or directory" in process.logs()
    process = WebhookProcess(tmp_path, ["--tls-min-version", "1.4"])
    assert process.proc.wait(30) == 2
    process.stop()
    assert "--tls-min-version" in process.logs()


def test_tls_min_version_1_0_and_1_1_mean_1_2_with_a_warning(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """OpenSSL refuses TLS 1.0/1.1 anyway: the listener says so and enforces 1.2 instead of pretending (issue 18)."""
    import ssl

    from webhook.serving.tls import ServingCertificate

    for requested in ("1.0", "1.1"):
        with caplog.at_level("WARNING", logger="tls"):
            cert = ServingCertificate(tmp_path, requested)
        assert cert.context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert f"--tls-min-version {requested}" in caplog.text and "the minimum is 1.2" in caplog.text
        caplog.clear()
    assert ServingCertificate(tmp_path, "1.3").context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert caplog.text == ""


def test_limits_from_the_environment_name_the_variable() -> None:
    from webhook.serving.limits import Limits

    assert Limits.from_env({}) == Limits()
    bounds = Limits.from_env({"WI_WEBHOOK_IDLE_TIMEOUT": "2.5", "WI_WEBHOOK_MAX_CONNECTIONS": " 10 "})
    assert bounds.idle_timeout == 2.5 and bounds.max_connections == 10
    for variable, text in (("WI_WEBHOOK_MAX_CONNECTIONS", "1.5"), ("WI_WEBHOOK_BODY_TIMEOUT", "0"),
                           ("WI_WEBHOOK_HEADER_TIMEOUT", "soon")):
        with pytest.raises(ValueError, match=f"{variable}={text!r} is not a positive"):
            Limits.from_env({variable: text})


def test_body_budget_waits_in_order_and_gives_up_after_its_timeout() -> None:
    import asyncio

    from webhook.serving.limits import BodyBudget

    async def scenario() -> None:
        budget = BodyBudget(10)
        assert budget.charge(None, 100) == 10 and budget.charge(4, 100) == 4  # unknown: the whole budget
        assert await budget.acquire(6, 1)
        waiting = asyncio.ensure_future(budget.acquire(6, 5))
        await asyncio.sleep(0.01)
        assert not waiting.done() and not await budget.acquire(1, 0.05)  # behind the waiter: no overtaking
        budget.release(6)
        assert await waiting and budget.used == 6
        assert not await budget.acquire(5, 0.05) and budget.used == 6
        budget.release(6)
        assert budget.used == 0 and await budget.acquire(10, 0.01)

    asyncio.run(scenario())


def test_a_bug_answering_a_review_gives_an_admission_review_not_a_bare_500(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any exception from the handler (a bug) still answers 200 with an AdmissionReview denying with status 500 and
    the review's uid, is logged with its traceback and the uid, and counts as an `error`."""
    import asyncio
    import logging

    from aiohttp.test_utils import TestClient, TestServer

    from tests.support import config
    from webhook.core.constants import MUTATE_PATH
    from webhook.serving.handler import AdmissionHandler
    from webhook.serving.server import webhook_app
    from webhook.sources.serviceaccounts import StaticServiceAccounts

    handler = AdmissionHandler(config(), StaticServiceAccounts([]))

    async def broken(body: bytes) -> bytes:
        raise RuntimeError("a bug in the core")

    monkeypatch.setattr(handler, "review", broken)

    def errors() -> float:
        return handler.metrics.registry.get_sample_value(
            "wi_webhook_admission_requests_total", {"decision": "error", "namespace": ""}) or 0.0

    async def post() -> tuple[int, str, bytes]:
        async with TestClient(TestServer(webhook_app(handler, 1 << 20))) as client:
            response = await client.post(MUTATE_PATH, data=review(pod(), uid="uid-bug"),
                                         headers={"Content-Type": "application/json"})
            return response.status, response.content_type, await response.read()

    before = errors()
    with caplog.at_level(logging.ERROR, logger="webhook"):
        status, content_type, body = asyncio.run(post())
    assert status == 200 and content_type == "application/json"
    answer = orjson.loads(body)
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == "uid-bug" and response["allowed"] is False
    assert response["status"]["code"] == 500
    assert "uid-bug" in response["status"]["message"] and "see the webhook's log" in response["status"]["message"]
    [record] = [r for r in caplog.records if r.exc_info is not None]
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
    assert record.uid == "uid-bug"  # type: ignore[attr-defined]
    assert "a bug in the core" in caplog.text  # the traceback
    assert errors() == before + 1
