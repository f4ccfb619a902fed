"""The reference itself as the oracle: the same generated AdmissionReviews go to the reference webhook
(Azure/azure-workload-identity v1.6.0, `cmd/webhook` built unmodified by hack/reference/build.sh) and to
`wi-webhook serve`, both reading their ServiceAccounts from the e2e API server.

Compared for every review: allowed or denied, the denial's code and text, and the pod after each one's patch, as a
typed consumer sees it (the reference re-serialises a typed Pod: `creationTimestamp: null`, `resources: {}` and
`status: {}` appear, which a typed reader cannot tell from absent). Every difference fails the test unless it is
one of KNOWN_DIFFERENCES, each of which names the README "Behaviour and compatibility" line that documents it and
is checked precisely (the review is also sent to the reference in the form the difference says we treat it as).

Seeded: WI_DIFF_SEED picks the seed (else a random one, printed on failure), WI_DIFF_CASES the number of reviews
per configuration (two configurations: without and with the custom token endpoint).
"""

from __future__ import annotations

import base64
import copy
import http.client
import os
import random
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonpatch
import orjson
import pytest
from kubernetes import client

from tests.processes import WebhookProcess, free_port, make_certs
from webhook.core.injected import volume_name_for

from .helpers import TENANT, WI

REFERENCE_PORT = 9443  # controller-runtime's webhook server: the reference has no flag for it
SEED = int(os.environ.get("WI_DIFF_SEED") or random.SystemRandom().randrange(2**32))
CASES = int(os.environ.get("WI_DIFF_CASES") or 2000)
README = Path(__file__).resolve().parents[2] / "README.md"

# Each difference we allow, with the README line (a substring of it) that documents it.
KNOWN_DIFFERENCES = {
    "proxy-false": "`inject-proxy-sidecar: \"false\"` does not inject (#1210)",
    "proxy-port-range": "the proxy port is range-checked: a port outside 1\u201365535 is denied",
    "denial-fix-hint": "denials name the annotation to fix: the reference's text, then the fix in parentheses",
    "unknown-fields": "fields the reference's typed Pod (k8s.io/api v0.31) does not know survive",
    "status-annotation": "injected pods also get the `wi-webhook/status` annotation",
}
CUSTOM_SUFFIX, CUSTOM_AUDIENCE = "identity-binding", "api://custom-endpoint"
CUSTOM_ENV = {"AZURE_KUBERNETES_TOKEN_PROXY": "https://token-proxy.example:8443", "AZURE_KUBERNETES_SNI_NAME": "sni",
              "AZURE_KUBERNETES_CA_CONFIGMAP_NAME": "custom-ca"}
CLIENTS = ["00000000-1111-2222-3333-444444444444", "11111111-2222-3333-4444-555555555555"]
SERVICE_ACCOUNTS: dict[str, dict[str, str]] = {
    "full": {f"{WI}/client-id": CLIENTS[0], f"{WI}/tenant-id": "22222222-3333-4444-5555-666666666666",
             f"{WI}/service-account-token-expiration": "7200"},
    "client": {f"{WI}/client-id": CLIENTS[1]},
    "none": {},
    "empty-client": {f"{WI}/client-id": ""},
    "empty-tenant": {f"{WI}/client-id": CLIENTS[0], f"{WI}/tenant-id": ""},
    "bad-expiration": {f"{WI}/client-id": CLIENTS[0], f"{WI}/service-account-token-expiration": "1h"},
    "short-expiration": {f"{WI}/client-id": CLIENTS[0], f"{WI}/service-account-token-expiration": "100"},
    "long-expiration": {f"{WI}/service-account-token-expiration": "86401"},
    "empty-expiration": {f"{WI}/client-id": CLIENTS[1], f"{WI}/service-account-token-expiration": ""},
}


class Reference:
    """The reference webhook as a process on 127.0.0.1:9443; stopped by PID."""

    def __init__(self, binary: Path, workdir: Path, kubeconfig: Path, args: list[str], env: dict[str, str]) -> None:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", REFERENCE_PORT))
            except OSError as exc:
                raise RuntimeError(f"port {REFERENCE_PORT} is taken; the reference webhook needs it: {exc}") from None
        self.cert_dir = workdir / "certs"
        self.ca_file = make_certs(self.cert_dir)
        self.health = free_port()
        self.log_path = workdir / "reference.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [str(binary), "--kubeconfig", str(kubeconfig), "--webhook-cert-dir", str(self.cert_dir),
             "--disable-cert-rotation", "--health-addr", f"127.0.0.1:{self.health}",
             "--metrics-addr", f"127.0.0.1:{free_port()}", "--log-level", "info", *args],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "POD_NAMESPACE": "default", **env})

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the reference exited with {self.proc.returncode}:\n{self.logs()[-3000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.health, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
                conn.close()
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the reference was not ready after {timeout}s:\n{self.logs()[-3000:]}")

    def connection(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", REFERENCE_PORT, timeout=15,
                                           context=ssl.create_default_context(cafile=str(self.ca_file)))

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@pytest.fixture(scope="module")
def namespace(cluster: Any) -> Iterator[str]:
    name = f"wi-diff-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(name)
    with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        for account, annotations in SERVICE_ACCOUNTS.items():
            core.create_namespaced_service_account(name, {"metadata": {"name": account, "annotations": annotations}})
    try:
        yield name
    finally:
        with cluster.api_client() as api:
            client.CoreV1Api(api).delete_namespace(name)


@dataclass
class Case:
    """One generated review and what the generator put in it that a known difference depends on."""

    uid: str
    api_version: str
    pod: dict[str, Any]
    # (container list, container name, field) of the fields k8s.io/api v0.31 lacks, which the reference drops
    unknown_fields: list[tuple[str, str, str]] = field(default_factory=list)


def generate(rng: random.Random, index: int, custom: bool) -> Case:
    names = rng.sample(["app", "worker", "sidecar", "web", "db"], rng.randint(1, 3))
    init_names = rng.sample(["setup", "migrate", "mesh"], rng.randint(0, 2))
    named = rng.random() < 0.7
    pod_name = f"pod-{index}"
    volume = volume_name_for(pod_name if named else "gen- (prefix)")
    case = Case(uid=str(uuid.UUID(int=rng.getrandbits(128))), api_version=rng.choice(
        ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"]), pod={})

    def container(name: str, init: bool) -> dict[str, Any]:
        c: dict[str, Any] = {"name": name, "image": "busybox"}
        if init and rng.random() < 0.4:
            c["restartPolicy"] = "Always"  # a native sidecar (the reference's #1312)
        env = []
        for env_name in rng.sample(["AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_AUTHORITY_HOST", "FOO", "BAR"],
                                   rng.choice([0, 0, 1, 2])):
            if rng.random() < 0.2:
                env.append({"name": env_name, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
            else:
                env.append({"name": env_name, "value": rng.choice(["x", CLIENTS[0], ""])})
        if env or rng.random() < 0.1:
            c["env"] = env
        mounts = []
        if rng.random() < 0.15:
            mounts.append({"name": volume, "mountPath": rng.choice(["/var/run/secrets/azure/wi", "/elsewhere"]),
                           **({"readOnly": True} if rng.random() < 0.5 else {})})
        if rng.random() < 0.3:
            mounts.append({"name": "data", "mountPath": "/data"})
        if mounts or rng.random() < 0.1:
            c["volumeMounts"] = mounts
        if rng.random() < 0.03:
            c["futureField"] = {"enabled": True}  # unknown to the reference's typed Pod
            case.unknown_fields.append(("initContainers" if init else "containers", name, "futureField"))
        return c

    annotations: dict[str, str] = {}
    if rng.random() < 0.35:
        choices = [*names, *init_names, "azwi-proxy", "azwi-proxy-init", "ghost", "", " app "]
        annotations[f"{WI}/skip-containers"] = ";".join(rng.sample(choices, rng.randint(1, 3)))
    if rng.random() < 0.3:
        annotations[f"{WI}/inject-proxy-sidecar"] = rng.choice(["true", "", "yes", "false", " FALSE "])
        if rng.random() < 0.5:
            annotations[f"{WI}/proxy-sidecar-port"] = rng.choice(["8080", "abc", "0", "-1", "65536", "+80", "",
                                                                   "2147483648"])
    if rng.random() < 0.25:
        annotations[f"{WI}/service-account-token-expiration"] = rng.choice(
            ["3600", "7200", "86400", "86401", "3599", "abc", "", "+4000", " 3600"])
    if custom and rng.random() < 0.6:
        annotations[f"{WI}/use-{CUSTOM_SUFFIX}"] = rng.choice(["true", "TRUE", "false", "yes"])
    if rng.random() < 0.2:
        annotations["example.com/other"] = "kept"
    metadata: dict[str, Any] = {"namespace": "placeholder", "labels": {f"{WI}/use": "true"}}
    if named:
        metadata["name"] = pod_name
    else:
        metadata["generateName"] = "gen-"
    if annotations or rng.random() < 0.3:
        metadata["annotations"] = annotations
    spec: dict[str, Any] = {
        "containers": [container(name, False) for name in names],
        "serviceAccountName": rng.choice([*SERVICE_ACCOUNTS, *SERVICE_ACCOUNTS, "", "default", "ghost"]),
    }
    if init_names:
        spec["initContainers"] = [container(name, True) for name in init_names]
    if rng.random() < 0.1:
        spec["hostNetwork"] = True
    volumes = []
    if rng.random() < 0.15:
        volumes.append({"name": volume, "projected": {"sources": [{"serviceAccountToken": {
            "path": "token/azure-identity-token", "expirationSeconds": rng.choice([3600, 7200]),
            "audience": "api://AzureADTokenExchange"}}]}})
    if rng.random() < 0.3:
        volumes.append({"name": "data", "emptyDir": {}})
    if volumes or rng.random() < 0.1:
        spec["volumes"] = volumes
    case.pod = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
    return case


def review(case: Case, pod: dict[str, Any], namespace: str) -> bytes:
    pod = copy.deepcopy(pod)
    pod["metadata"]["namespace"] = namespace
    return orjson.dumps({"apiVersion": case.api_version, "kind": "AdmissionReview", "request": {
        "uid": case.uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": namespace,
        "operation": "CREATE", "userInfo": {"username": "diff"}, "object": pod}})


def answer(conn: http.client.HTTPSConnection, path: str, body: bytes) -> dict[str, Any]:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    assert response.status == 200, (response.status, data[:500])
    parsed: dict[str, Any] = orjson.loads(data)
    return parsed


def as_typed(obj: Any) -> Any:
    """What a typed reader makes of a pod: null, "", {} and [] are the same as absent (Go's zero values of the
    `omitempty` strings, structs and lists the reference re-serialises away). `false` and 0 are kept: some bools
    are pointers, where false is not absent."""
    if isinstance(obj, dict):
        out = {key: as_typed(value) for key, value in obj.items()}
        return {key: value for key, value in out.items() if value is not None and value not in ("", {}, [])}
    if isinstance(obj, list):
        return [as_typed(item) for item in obj]
    return obj


def patched(pod: dict[str, Any], namespace: str, response: dict[str, Any]) -> dict[str, Any]:
    original = copy.deepcopy(pod)
    original["metadata"]["namespace"] = namespace
    if "patch" not in response:
        return original
    assert response["patchType"] == "JSONPatch"
    result: dict[str, Any] = jsonpatch.apply_patch(original, orjson.loads(base64.b64decode(response["patch"])))
    return result


def differences(mine: Any, theirs: Any) -> str:
    """A unified diff of the two pods as sorted JSON (ours first), for the failure message."""
    import difflib

    def lines(obj: Any) -> list[str]:
        return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode().splitlines()

    return "\n".join(difflib.unified_diff(lines(mine), lines(theirs), "wi-webhook", "reference", lineterm=""))


def without(pod: dict[str, Any], fields: list[tuple[str, str, str]]) -> dict[str, Any]:
    """The pod without the given containers' fields."""
    pod = copy.deepcopy(pod)
    for list_key, name, key in fields:
        for container in pod["spec"].get(list_key) or []:
            if container.get("name") == name:
                container.pop(key, None)
    return pod


def classify(case: Case, namespace: str, ours: dict[str, Any], theirs: dict[str, Any],
             ask_reference: Any) -> list[str]:
    """The known differences this case shows, after checking each precisely; AssertionError for any other."""
    seen: list[str] = []
    their_input = case.pod
    annotations = case.pod["metadata"].get("annotations") or {}
    proxy = annotations.get(f"{WI}/inject-proxy-sidecar")
    proxy_keys = (f"{WI}/inject-proxy-sidecar", f"{WI}/proxy-sidecar-port")
    if proxy is not None and proxy.strip().lower() == "false":
        # We do not inject the proxy for "false": we answer as the reference answers the pod without the annotation.
        their_input = copy.deepcopy(case.pod)
        for key in proxy_keys:
            their_input["metadata"]["annotations"].pop(key, None)
        theirs_without = ask_reference(review(case, their_input, namespace))
        if theirs_without != theirs:
            seen.append("proxy-false")
        theirs = theirs_without
    allowed, their_allowed = ours["response"]["allowed"], theirs["response"]["allowed"]
    status = ours["response"].get("status") or {}
    if status.get("reason") == "InvalidProxyPort" and "Expected value to be between 1 and 65535" in status["message"]:
        # We stop at a port outside 1-65535; the reference takes it and goes on: it admits the pod, or denies it at
        # a later step (the token expiration), never for the port.
        assert their_allowed or "proxy sidecar port" not in theirs["response"]["status"]["message"], (ours, theirs)
        return [*seen, "proxy-port-range"]
    assert allowed == their_allowed, (ours, theirs)
    if not allowed:
        mine, reference = ours["response"]["status"], theirs["response"]["status"]
        assert mine["code"] == reference["code"], (mine, reference)
        if mine["message"] != reference["message"]:
            assert mine["message"].startswith(reference["message"] + " ("), (mine, reference)
            seen.append("denial-fix-hint")
        return seen
    mine_pod = patched(case.pod, namespace, ours["response"])
    their_pod = patched(their_input, namespace, theirs["response"])
    if mine_pod["metadata"].get("annotations", {}).pop("wi-webhook/status", None) is not None:
        seen.append("status-annotation")
    if their_input is not case.pod:  # compare what both made of the rest of the pod
        for key in proxy_keys:
            mine_pod["metadata"].get("annotations", {}).pop(key, None)
    if case.unknown_fields:
        mine_known = as_typed(without(mine_pod, case.unknown_fields))
        assert mine_known == as_typed(their_pod), differences(mine_known, as_typed(their_pod))
        assert as_typed(mine_pod) != as_typed(their_pod)  # ours kept them; the reference dropped them
        return [*seen, "unknown-fields"]
    assert as_typed(mine_pod) == as_typed(their_pod), differences(as_typed(mine_pod), as_typed(their_pod))
    return seen


@pytest.mark.parametrize("custom", [False, True], ids=["default", "custom-token-endpoint"])
def test_same_answers_as_the_reference(custom: bool, cluster: Any, namespace: str, reference_bin: Path,
                                       tmp_path: Path) -> None:
    compatibility = README.read_text(encoding="utf-8").split("## Behaviour and compatibility", 1)[1]
    compatibility = " ".join(compatibility.split("\n## ", 1)[0].split())
    for documented in KNOWN_DIFFERENCES.values():
        assert documented in compatibility, f"README 'Behaviour and compatibility' does not list: {documented}"
    args = ["--custom-token-endpoint-annotation-suffix", CUSTOM_SUFFIX,
            "--custom-token-endpoint-audience", CUSTOM_AUDIENCE] if custom else []
    env = {"AZURE_TENANT_ID": TENANT, **(CUSTOM_ENV if custom else {})}
    reference = Reference(reference_bin / "azwi-webhook", tmp_path, cluster.kubeconfig, args, env)
    ours = WebhookProcess(tmp_path, ["--kubeconfig", str(cluster.kubeconfig), "--disable-cert-rotation",
                                     "--log-level", "info", *args], env=env)
    rng = random.Random(SEED + custom)
    counts: dict[str, int] = {}
    try:
        reference.wait_ready()
        ours.wait_ready(60)
        their_conn, our_conn = reference.connection(), ours.connection()

        def ask_reference(body: bytes) -> dict[str, Any]:
            return answer(their_conn, "/mutate-v1-pod", body)

        for index in range(CASES):
            case = generate(rng, index, custom)
            body = review(case, case.pod, namespace)
            mine, theirs = answer(our_conn, "/mutate-v1-pod", body), ask_reference(body)
            assert mine["response"]["uid"] == theirs["response"]["uid"] == case.uid
            assert mine["apiVersion"] == theirs["apiVersion"] == case.api_version
            try:
                kinds = classify(case, namespace, mine, theirs, ask_reference)
            except AssertionError as exc:
                raise AssertionError(f"seed {SEED} (WI_DIFF_SEED={SEED}), case {index}, custom={custom}: an "
                                     f"undocumented difference\nreview: {body.decode()[:3000]}\n{exc}") from None
            for kind in kinds:
                counts[kind] = counts.get(kind, 0) + 1
            counts["cases"] = counts.get("cases", 0) + 1
            counts["denied" if not mine["response"]["allowed"] else "allowed"] = counts.get(
                "denied" if not mine["response"]["allowed"] else "allowed", 0) + 1
    finally:
        reference.stop()
        ours.stop()
    print(f"\nreference diff (seed {SEED}, custom={custom}): {counts}")
    assert counts["cases"] == CASES and counts.get("allowed", 0) > CASES // 4 and counts.get("denied", 0) > 10
