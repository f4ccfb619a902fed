"""Self-managed certificates against the real API server: an empty Secret is filled, the caBundle injected, the
API server admits pods through the webhook, two replicas agree, and forced rotations (serving certificate, then
CA) under a stream of pod creations cause zero failed admissions.

No kubelet runs here, so a small "volume syncer" plays its part: it copies the Secret's keys into each replica's
certificate directory with an atomic rename, as the kubelet's atomic writer does for Secret volumes.
"""

from __future__ import annotations

import base64
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.e2e.helpers import E2E_LABEL, FOUR, TENANT, WI, Env, env_names, eventually
from tests.processes import WebhookProcess

SECRET = "azure-wi-webhook-server-cert"


class VolumeSyncer:
    """Copies Secret data into directories (atomic rename per file), polling like the kubelet (faster)."""

    def __init__(self, core: Any, namespace: str, targets: list[Path], interval: float = 0.3) -> None:
        self.core, self.namespace, self.targets, self.interval = core, namespace, targets, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.syncs = 0

    def _run(self) -> None:
        last: dict[str, str] = {}
        while not self._stop.wait(self.interval):
            with contextlib.suppress(ApiException, OSError):
                data = self.core.read_namespaced_secret(SECRET, self.namespace).data or {}
                if data and data != last:
                    for target in self.targets:
                        target.mkdir(parents=True, exist_ok=True)
                        for key, value in data.items():
                            tmp = target / f".{key}.tmp"
                            tmp.write_bytes(base64.b64decode(value))
                            tmp.replace(target / key)
                    last = data
                    self.syncs += 1

    def __enter__(self) -> VolumeSyncer:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def system(cluster: Any) -> Iterator[tuple[Any, str, str]]:
    api = cluster.api_client()
    label = uuid.uuid4().hex[:8]
    namespace = f"wi-system-{label}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": namespace}})
    core.create_namespaced_secret(namespace, {"metadata": {"name": SECRET}})  # the chart pre-creates it empty
    yield api, namespace, label
    core.delete_namespace(namespace)


def replica(workdir: Path, cluster: Any, namespace: str, config_name: str, cert_dir: Path) -> WebhookProcess:
    cert_dir.mkdir(parents=True, exist_ok=True)
    return WebhookProcess(workdir, ["--kubeconfig", str(cluster.kubeconfig), "--webhook-config-name", config_name,
                                    "--cert-secret-name", SECRET, "--cert-host", "127.0.0.1",
                                    "--cert-check-rotation-interval", "1s"],
                          env={"AZURE_TENANT_ID": TENANT, "POD_NAMESPACE": namespace}, cert_dir=cert_dir)


def test_self_managed_certificates_and_rotation_under_load(cluster: Any, system: tuple[Any, str, str],
                                                           tmp_path: Path) -> None:
    api, namespace, label = system
    core = client.CoreV1Api(api)
    admission = client.AdmissionregistrationV1Api(api)
    config_name = f"azure-wi-webhook-mutating-webhook-configuration-{label}"
    dirs = [tmp_path / "r1" / "certs", tmp_path / "r2" / "certs"]
    for d in dirs:
        d.parent.mkdir(parents=True)
    phases: list[str] = []
    first = replica(dirs[0].parent, cluster, namespace, config_name, dirs[0])
    second = replica(dirs[1].parent, cluster, namespace, config_name, dirs[1])
    app_ns = f"wi-app-{label}"
    try:
        # Registered without a caBundle: the webhook fills it in. Both replicas behind one URL is not possible
        # without a Service, so the configuration points at the first; the second proves the Secret race is safe.
        hook = _hook_without_ca(first.url, label)
        admission.create_mutating_webhook_configuration({"metadata": {"name": config_name}, "webhooks": [hook]})
        core.create_namespace({"metadata": {"name": app_ns, "labels": {E2E_LABEL: label}}})
        env = Env(api, app_ns)
        env.service_account("workload", **{f"{WI}/client-id": "00000000-1111-2222-3333-444444444444"})
        with VolumeSyncer(core, namespace, dirs):
            first.wait_ready(60)
            second.wait_ready(60)
            secret = core.read_namespaced_secret(SECRET, namespace).data
            assert set(secret) >= {"ca.crt", "ca.key", "tls.crt", "tls.key"}
            ca_bundle = admission.read_mutating_webhook_configuration(config_name).webhooks[0].client_config.ca_bundle
            assert base64.b64decode(ca_bundle).startswith(base64.b64decode(secret["ca.crt"]))
            assert (dirs[0] / "tls.crt").read_bytes() == (dirs[1] / "tls.crt").read_bytes()  # replicas agree
            eventually(lambda: env_names(env.create(env.pod_body("probe"), dry_run="All")["spec"]["containers"][0])
                       == FOUR, timeout=30)

            failures: list[str] = []
            created = 0
            stop = threading.Event()

            def load() -> None:
                nonlocal created
                index = 0
                while not stop.is_set() and index < 400:
                    index += 1
                    try:
                        pod = env.create(env.pod_body(f"load-{index}"))
                        if env_names(pod["spec"]["containers"][0]) != FOUR:
                            failures.append(f"load-{index}: not mutated")
                        created += 1
                    except ApiException as exc:
                        failures.append(f"load-{index} at {time.monotonic():.1f}: {exc.status} {exc.body}")
                    time.sleep(0.05)

            worker = threading.Thread(target=load, daemon=True)
            worker.start()
            serving = (dirs[0] / "tls.crt").read_bytes()
            phases = [f"serving rotation at {time.monotonic():.1f}"]
            _corrupt(core, namespace, ["tls.crt", "tls.key"])  # force a serving-certificate rotation
            eventually(lambda: (dirs[0] / "tls.crt").read_bytes() not in (serving, b"garbage"), timeout=30)
            time.sleep(3)
            # A CA rotation: the new CA is trusted (caBundle = new + the CA the replicas serve now) before any
            # replica serves a certificate signed by it. (Expiry-driven CA renewal is covered by unit tests.)
            old_ca = _ca_of(core, namespace)
            phases.append(f"CA rotation at {time.monotonic():.1f}")
            _corrupt(core, namespace, ["ca.crt", "ca.key"])
            eventually(lambda: _ca_of(core, namespace) not in (old_ca, b"garbage"), timeout=30)
            time.sleep(5)
            stop.set()
            worker.join(60)
        assert failures == [] and created > 20, (phases, failures[:3], created)
    finally:
        with contextlib.suppress(ApiException):
            admission.delete_mutating_webhook_configuration(config_name)
        with contextlib.suppress(ApiException):
            core.delete_namespace(app_ns)
        first.stop()
        second.stop()


def _hook_without_ca(url: str, label: str) -> dict[str, Any]:
    return {
        "name": "mutation.azure-workload-identity.io",
        "clientConfig": {"url": url},
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
        "objectSelector": {"matchLabels": {f"{WI}/use": "true"}},
        "namespaceSelector": {"matchLabels": {E2E_LABEL: label}},
        "failurePolicy": "Fail", "reinvocationPolicy": "IfNeeded", "sideEffects": "None", "timeoutSeconds": 10,
        "admissionReviewVersions": ["v1", "v1beta1"],
    }


def _ca_of(core: Any, namespace: str) -> bytes:
    return base64.b64decode(core.read_namespaced_secret(SECRET, namespace).data["ca.crt"])


def _corrupt(core: Any, namespace: str, keys: list[str]) -> None:
    secret = core.read_namespaced_secret(SECRET, namespace)
    for key in keys:
        secret.data[key] = base64.b64encode(b"garbage").decode()
    core.replace_namespaced_secret(SECRET, namespace, secret)
