"""End to end: the real kube-apiserver calls `wi-webhook serve` (real subprocess, real TLS) for real pods.

The API server runs without controller-manager, scheduler or kubelet, so pods stay Pending: what is asserted is
the pod as the API server stored it after admission. kube-apiserver's own ServiceAccount admission plugin runs
before mutating webhooks and already rejects pods whose ServiceAccount does not exist; the webhook's identical
reference denial is therefore also checked by calling the running webhook directly against the same cluster.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.e2e.fake_entra import FakeEntra
from tests.e2e.helpers import (
    CLIENT_ID,
    E2E_LABEL,
    FOUR,
    TENANT,
    WI,
    Env,
    env_names,
    eventually,
    mutating_webhook,
    wi_volumes,
)
from tests.processes import WebhookProcess, free_port, make_certs
from webhook.cli.main import parse_server_version
from webhook.core.injected import volume_name_for


@pytest.fixture(scope="module")
def webhook(cluster: Any, fake_entra_server: FakeEntra,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookProcess]:
    """The webhook in cluster mode; its cloud is an Azure Stack-style custom cloud whose authority is the fake
    Entra ID, so the injected AZURE_AUTHORITY_HOST leads azure-identity to a token endpoint that validates."""
    workdir = tmp_path_factory.mktemp("e2e-webhook")
    cloud = workdir / "cloud.json"
    cloud.write_text(orjson.dumps({"name": "AzureStackCloud",
                                   "activeDirectoryEndpoint": fake_entra_server.authority_host}).decode())
    process = WebhookProcess(workdir, ["--kubeconfig", str(cluster.kubeconfig), "--native-sidecar", "auto",
                                       "--disable-cert-rotation", "--log-level", "debug"],
                             env={"AZURE_TENANT_ID": TENANT, "AZURE_ENVIRONMENT": "AzureStackCloud",
                                  "AZURE_ENVIRONMENT_FILEPATH": str(cloud)})
    try:
        process.wait_ready(60)
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def env(cluster: Any, webhook: WebhookProcess) -> Iterator[Env]:
    api = cluster.api_client()
    label = uuid.uuid4().hex[:8]
    namespace = f"wi-e2e-{label}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace, "labels": {E2E_LABEL: label}}})
    admission = client.AdmissionregistrationV1Api(api)
    config_name = f"a-wi-webhook-{label}"  # sorts before the helper webhook below: reinvocation is exercised
    admission.create_mutating_webhook_configuration(
        {
            "metadata": {"name": config_name},
            "webhooks": [mutating_webhook("mutation.azure-workload-identity.io", webhook.url, webhook.ca_file, label)],
        }
    )
    environment = Env(api, namespace)
    environment.service_account("workload", **{f"{WI}/client-id": CLIENT_ID})
    # The API server picks up webhook configurations asynchronously: wait until a dry-run pod comes back mutated.
    eventually(
        lambda: (
            "AZURE_CLIENT_ID"
            in env_names(environment.create(environment.pod_body("probe"), dry_run="All")["spec"]["containers"][0])
        )
    )
    try:
        yield environment
    finally:
        admission.delete_mutating_webhook_configuration(config_name)
        client.CoreV1Api(api).delete_namespace(namespace)


def test_labelled_pod_is_injected_and_stored(env: Env, fake_entra_server: FakeEntra) -> None:
    env.create(env.pod_body("plain"))
    pod = env.stored("plain")
    app = pod["spec"]["containers"][0]
    assert env_names(app) == FOUR
    values = {e["name"]: e["value"] for e in app["env"]}
    assert values["AZURE_CLIENT_ID"] == CLIENT_ID and values["AZURE_TENANT_ID"] == TENANT
    assert values["AZURE_FEDERATED_TOKEN_FILE"] == "/var/run/secrets/azure/wi/token/azure-identity-token"
    assert values["AZURE_AUTHORITY_HOST"] == fake_entra_server.authority_host
    [volume] = wi_volumes(pod)
    assert volume["name"] == volume_name_for("plain")
    token = volume["projected"]["sources"][0]["serviceAccountToken"]
    assert token == {
        "audience": "api://AzureADTokenExchange",
        "expirationSeconds": 3600,
        "path": "token/azure-identity-token",
    }
    mounts = [m for m in app["volumeMounts"] if m["name"] == volume["name"]]
    assert mounts == [{"name": volume["name"], "mountPath": "/var/run/secrets/azure/wi", "readOnly": True}]


def test_unlabelled_pod_is_untouched(env: Env) -> None:
    env.create(env.pod_body("unlabelled", labelled=False))
    pod = env.stored("unlabelled")
    assert env_names(pod["spec"]["containers"][0]) == [] and wi_volumes(pod) == []


def test_generate_name_pod(env: Env) -> None:
    created = env.create(env.pod_body(None))
    pod = env.stored(created["metadata"]["name"])
    assert [v["name"] for v in wi_volumes(pod)] == [volume_name_for("gen- (prefix)")]
    assert env_names(pod["spec"]["containers"][0]) == FOUR


def test_init_containers_skip_containers_and_native_sidecar_restart_policy(env: Env) -> None:
    body = env.pod_body(
        "inits",
        annotations={f"{WI}/skip-containers": "skipped; "},
        initContainers=[
            {"name": "setup", "image": "busybox"},
            {"name": "mesh", "image": "busybox", "restartPolicy": "Always"},
        ],
        containers=[{"name": "app", "image": "busybox"}, {"name": "skipped", "image": "busybox"}],
    )
    env.create(body)
    spec = env.stored("inits")["spec"]
    assert env_names(spec["initContainers"][0]) == FOUR
    assert spec["initContainers"][1]["restartPolicy"] == "Always"  # the reference's #1312 dropped this
    assert env_names(spec["initContainers"][1]) == FOUR
    assert env_names(spec["containers"][0]) == FOUR
    assert env_names(spec["containers"][1]) == []
    assert all(m["mountPath"] != "/var/run/secrets/azure/wi" for m in spec["containers"][1].get("volumeMounts", []))


def test_fields_the_webhook_does_not_model_survive(env: Env) -> None:
    body = env.pod_body(
        "fields",
        os={"name": "linux"},
        hostUsers=True,
        schedulingGates=[{"name": "wait"}],
        resourceClaims=[],
        enableServiceLinks=False,
    )
    body["spec"]["containers"][0].update(
        {
            "resizePolicy": [{"resourceName": "cpu", "restartPolicy": "NotRequired"}],
            "stdin": True,
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
    )
    env.create(body)
    spec = env.stored("fields")["spec"]
    assert spec["os"] == {"name": "linux"} and spec["schedulingGates"] == [{"name": "wait"}]
    assert spec["enableServiceLinks"] is False and spec["hostUsers"] is True
    app = spec["containers"][0]
    assert app["resizePolicy"] == [{"resourceName": "cpu", "restartPolicy": "NotRequired"}]
    assert app["stdin"] is True and env_names(app) == FOUR


def test_expiration_from_annotations_and_out_of_range_denied(env: Env) -> None:
    env.service_account(
        "long-lived", **{f"{WI}/client-id": CLIENT_ID, f"{WI}/service-account-token-expiration": "86400"}
    )
    env.create(env.pod_body("expiring", sa="long-lived"))
    token = wi_volumes(env.stored("expiring"))[0]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["expirationSeconds"] == 86400
    with pytest.raises(ApiException) as denied:
        env.create(env.pod_body("too-short", annotations={f"{WI}/service-account-token-expiration": "60"}))
    message = orjson.loads(denied.value.body)["message"]
    assert "token expiration 60 not valid. Expected value to be between 3600 and 86400" in message
    with pytest.raises(ApiException):
        env.stored("too-short")


def test_missing_service_account_denied(env: Env, webhook: WebhookProcess) -> None:
    with pytest.raises(ApiException) as denied:
        env.create(env.pod_body("ghostly", sa="ghost"))
    # kube-apiserver's own ServiceAccount admission plugin answers first, before any webhook:
    assert 'serviceaccount "ghost" not found' in orjson.loads(denied.value.body)["message"]
    with pytest.raises(ApiException):
        env.stored("ghostly")
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "direct",
            "namespace": env.namespace,
            "operation": "CREATE",
            "object": env.pod_body("ghostly", sa="ghost"),
        },
    }
    status, body = webhook.post(orjson.dumps(review))
    response = orjson.loads(body)["response"]
    assert status == 200 and response["allowed"] is False
    assert response["status"]["message"] == 'serviceaccounts "ghost" not found'


def test_service_account_created_a_moment_before_the_pod(env: Env) -> None:
    for i in range(5):  # the race that bit the AWS webhook: the cache may not have seen it yet
        env.service_account(f"fresh-{i}", **{f"{WI}/client-id": f"00000000-0000-0000-0000-00000000000{i}"})
        env.create(env.pod_body(f"race-{i}", sa=f"fresh-{i}"))
        values = {e["name"]: e["value"] for e in env.stored(f"race-{i}")["spec"]["containers"][0]["env"]}
        assert values["AZURE_CLIENT_ID"] == f"00000000-0000-0000-0000-00000000000{i}"


def _dry_runs(webhook: WebhookProcess) -> float:
    lines = webhook.get(webhook.metrics_port, "/metrics")[1].splitlines()
    return sum(float(line.split()[-1]) for line in lines
               if line.startswith('wi_webhook_admission_dry_runs_total{decision="mutated"}'))


def test_dry_run_returns_the_mutation_and_stores_nothing(env: Env, webhook: WebhookProcess) -> None:
    """`kubectl create --dry-run=server` (dryRun=All): the answer is the injected pod, nothing is stored, and the
    webhook (sideEffects: None) changes nothing either; its metrics and logs tell the dry run from a real one."""
    account = env.core.read_namespaced_service_account("workload", env.namespace).metadata.resource_version
    pods = len(env.core.list_namespaced_pod(env.namespace).items)
    before = _dry_runs(webhook)
    created = env.create(env.pod_body("dry"), dry_run="All")
    assert env_names(created["spec"]["containers"][0]) == FOUR
    assert created["metadata"]["annotations"]["wi-webhook/status"]
    with pytest.raises(ApiException) as missing:
        env.stored("dry")
    assert missing.value.status == 404
    assert len(env.core.list_namespaced_pod(env.namespace).items) == pods
    assert env.core.read_namespaced_service_account("workload", env.namespace).metadata.resource_version == account
    configs = client.AdmissionregistrationV1Api(env.api).list_mutating_webhook_configuration().items
    assert {hook.side_effects for config in configs for hook in config.webhooks} == {"None"}
    assert _dry_runs(webhook) == before + 1
    reviewed = [json.loads(line) for line in webhook.logs().splitlines() if '"pod reviewed"' in line]
    assert [entry["dry-run"] for entry in reviewed if entry.get("pod") == "dry"] == [True]
    env.create(env.pod_body("not-dry"))
    assert _dry_runs(webhook) == before + 1
    assert [entry["dry-run"] for entry in (json.loads(line) for line in webhook.logs().splitlines()
                                           if '"pod reviewed"' in line) if entry.get("pod") == "not-dry"] == [False]


def test_native_sidecar_auto_follows_the_api_server_version(env: Env, cluster: Any) -> None:
    native = parse_server_version(cluster.version) >= (1, 32)
    env.create(env.pod_body("proxied", annotations={f"{WI}/inject-proxy-sidecar": "true"}))
    spec = env.stored("proxied")["spec"]
    init_names = [c["name"] for c in spec["initContainers"]]
    if native:
        assert init_names == ["azwi-proxy", "azwi-proxy-init"]
        assert spec["initContainers"][0]["restartPolicy"] == "Always"
        assert [c["name"] for c in spec["containers"]] == ["app"]
    else:
        assert init_names == ["azwi-proxy-init"] and spec["containers"][0]["name"] == "azwi-proxy"
    env.create(env.pod_body("not-proxied", annotations={f"{WI}/inject-proxy-sidecar": "false"}))
    assert "initContainers" not in env.stored("not-proxied")["spec"]


class _AddContainer(BaseHTTPRequestHandler):
    """A second mutating webhook that adds a container, forcing the API server to reinvoke ours."""

    def do_POST(self) -> None:
        review = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
        pod = review["request"]["object"]
        patch = []
        if all(c["name"] != "late" for c in pod["spec"]["containers"]):
            patch = [{"op": "add", "path": "/spec/containers/-", "value": {"name": "late", "image": "busybox"}}]
        response: dict[str, Any] = {"uid": review["request"]["uid"], "allowed": True}
        if patch:
            response.update(patchType="JSONPatch", patch=base64.b64encode(orjson.dumps(patch)).decode())
        body = orjson.dumps({"apiVersion": review["apiVersion"], "kind": "AdmissionReview", "response": response})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        return None


@contextlib.contextmanager
def adder_webhook(workdir: Path) -> Iterator[tuple[str, Path]]:
    ca = make_certs(workdir)
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _AddContainer)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(workdir / "tls.crt", workdir / "tls.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/add", ca
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


def test_reinvocation_reaches_containers_added_later(env: Env, tmp_path: Path) -> None:
    label = env.core.read_namespace(env.namespace).metadata.labels[E2E_LABEL]
    admission = client.AdmissionregistrationV1Api(env.api)
    with adder_webhook(tmp_path) as (url, ca):
        name = f"z-adder-{label}"
        admission.create_mutating_webhook_configuration(
            {"metadata": {"name": name}, "webhooks": [mutating_webhook("adder.e2e.test", url, ca, label)]}
        )
        try:
            eventually(lambda: len(env.create(env.pod_body("probe2"), dry_run="All")["spec"]["containers"]) == 2)
            env.create(env.pod_body("reinvoked"))
        finally:
            admission.delete_mutating_webhook_configuration(name)
    pod = env.stored("reinvoked")
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app", "late"]
    for container in pod["spec"]["containers"]:
        assert env_names(container) == FOUR, container  # each exactly once
        assert sum(m["mountPath"] == "/var/run/secrets/azure/wi" for m in container["volumeMounts"]) == 1
    assert len(wi_volumes(pod)) == 1


def _injected_env_with_token(env: Env, pod_name: str, token_sa: str, root: Path) -> dict[str, str]:
    """The stored pod's injected env, with a real TokenRequest token for `token_sa` written where
    AZURE_FEDERATED_TOKEN_FILE points (under a temp root, standing in for the kubelet's projection)."""
    pod = env.stored(pod_name)
    values = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    source = wi_volumes(pod)[0]["projected"]["sources"][0]["serviceAccountToken"]
    request = env.core.create_namespaced_service_account_token(token_sa, env.namespace, {
        "spec": {"audiences": [source["audience"]], "expirationSeconds": source["expirationSeconds"]}})
    token_file = root / values["AZURE_FEDERATED_TOKEN_FILE"].lstrip("/")
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text(request.status.token)
    return {**values, "AZURE_FEDERATED_TOKEN_FILE": str(token_file)}


def test_workload_identity_credential_gets_a_token_with_the_injected_env(
        env: Env, cluster: Any, fake_entra: FakeEntra, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import WorkloadIdentityCredential

    client_id = str(uuid.uuid4())
    env.service_account("reader", **{f"{WI}/client-id": client_id})
    env.service_account("intruder", **{f"{WI}/client-id": client_id})
    subject = f"system:serviceaccount:{env.namespace}:reader"
    fake_entra.register(client_id, TENANT, issuer=cluster.issuer, subject=subject)
    env.create(env.pod_body("token-pod", sa="reader"))
    injected = _injected_env_with_token(env, "token-pod", "reader", tmp_path / "root")
    for name in FOUR:
        monkeypatch.setenv(name, injected[name])
    token = WorkloadIdentityCredential().get_token("https://management.azure.com/.default")
    assert token.token and token.expires_on > time.time()
    assert fake_entra.requests[-1].subject == subject

    # The same env with another ServiceAccount's token: no federated credential matches that subject.
    env.create(env.pod_body("intruder-pod", sa="intruder"))
    injected = _injected_env_with_token(env, "intruder-pod", "intruder", tmp_path / "root2")
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", injected["AZURE_FEDERATED_TOKEN_FILE"])
    with pytest.raises(ClientAuthenticationError, match="AADSTS70021"):
        WorkloadIdentityCredential().get_token("https://management.azure.com/.default")


def test_check_cluster_reports_stale_and_not_injected_pods(env: Env, cluster: Any) -> None:
    import subprocess
    import sys

    env.service_account("rotating", **{f"{WI}/client-id": CLIENT_ID})
    env.create(env.pod_body("before-edit", sa="rotating"))
    other = f"{env.namespace}-unwatched"  # not selected by the webhook configuration: the pod is not injected
    env.core.create_namespace({"metadata": {"name": other}})
    Env(env.api, other).service_account("workload")
    Env(env.api, other).create(Env(env.api, other).pod_body("missed"))
    env.core.patch_namespaced_service_account("rotating", env.namespace, {
        "metadata": {"annotations": {f"{WI}/client-id": "11111111-2222-3333-4444-555555555555"}}})

    def check(namespace: str) -> dict[str, Any]:
        result = subprocess.run([sys.executable, "-m", "webhook.cli", "check", "--cluster", "--kubeconfig",
                                 str(cluster.kubeconfig), "-n", namespace, "-o", "json"], capture_output=True,
                                text=True, timeout=60, env={**os.environ, "AZURE_TENANT_ID": TENANT})
        assert result.returncode == 0, result.stderr
        report: dict[str, Any] = orjson.loads(result.stdout)
        return report

    stale = [f for f in check(env.namespace)["findings"] if f["name"] == "before-edit"]
    assert [f["rule"] for f in stale] == ["WI012"]
    missed = check(other)["findings"]
    assert [(f["rule"], f["name"]) for f in missed] == [("WI013", "missed")]


def test_identical_pods_follow_the_service_account_when_it_changes(env: Env) -> None:
    """A scale-up's identical generateName pods all get the identity; an annotation change delivered by the watch
    is used by the very next pod, and never the old identity after that."""
    env.service_account("burst", **{f"{WI}/client-id": CLIENT_ID})

    def client_id(pod: dict[str, Any]) -> str:
        values = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        return str(values["AZURE_CLIENT_ID"])

    first = [env.create(env.pod_body(None, sa="burst")) for _ in range(6)]
    assert {client_id(p) for p in first} == {CLIENT_ID}
    assert len({p["metadata"]["name"] for p in first}) == 6
    new_client = "12121212-3434-5656-7878-909090909090"
    env.core.patch_namespaced_service_account("burst", env.namespace, {
        "metadata": {"annotations": {f"{WI}/client-id": new_client}}})
    eventually(lambda: client_id(env.create(env.pod_body(None, sa="burst"))) == new_client, timeout=30)
    later = [env.create(env.pod_body(None, sa="burst")) for _ in range(3)]
    assert {client_id(p) for p in later} == {new_client}  # never the old identity again
    assert {client_id(env.stored(p["metadata"]["name"])) for p in first} == {CLIENT_ID}


def test_zz_api_server_outage_and_watch_resume(env: Env, cluster: Any, webhook: WebhookProcess) -> None:
    """Runs last in this module: stops the shared API server for 30 s, then restarts it. Throughout, reviews for
    cached ServiceAccounts are answered (called directly: no API server to call us), readiness stays up and says
    the API server is unreachable, and the metrics show the outage."""
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
              "request": {"uid": "outage", "namespace": env.namespace, "operation": "CREATE",
                          "object": env.pod_body("during-outage")}}
    cluster.stop_apiserver()
    answered = 0
    try:
        outage_ends = time.monotonic() + 30
        while time.monotonic() < outage_ends:
            status, body = webhook.post(orjson.dumps(review))  # cached ServiceAccount: still mutated
            response = orjson.loads(body)["response"]
            assert status == 200 and response["allowed"] is True and response["patch"]
            answered += 1
            time.sleep(0.5)
        assert "wi_webhook_serviceaccount_cache_synced 0.0" in webhook.get(webhook.metrics_port, "/metrics")[1]
        errors = [line for line in webhook.get(webhook.metrics_port, "/metrics")[1].splitlines()
                  if line.startswith("wi_webhook_serviceaccount_watch_errors_total")]
        assert errors and float(errors[0].split()[-1]) > 0
        ready_status, ready_text = webhook.get(webhook.health_port, "/readyz")
        assert ready_status == 200 and "unreachable" in ready_text
        assert webhook.proc.poll() is None
    finally:
        cluster.start_apiserver()
    assert answered >= 30
    eventually(lambda: "wi_webhook_serviceaccount_cache_synced 1.0" in
               webhook.get(webhook.metrics_port, "/metrics")[1], timeout=60)
    new_client = "99999999-8888-7777-6666-555555555555"
    env.core.patch_namespaced_service_account("workload", env.namespace, {
        "metadata": {"annotations": {f"{WI}/client-id": new_client}}})

    def client_id_of_next_pod() -> bool:
        pod = env.create(env.pod_body("after-restart"), dry_run="All")
        values = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
        return values["AZURE_CLIENT_ID"] == new_client

    eventually(client_id_of_next_pod, timeout=60)  # a cache hit: only a resumed watch can deliver the change
