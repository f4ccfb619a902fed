"""Hypothesis-generated AdmissionReviews and pods through the real HTTPS server: never a 5xx, never a crash;
always a valid AdmissionReview (whose patch applies) or a 400 with a message."""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterator
from typing import Any

import jsonpatch
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.processes import WebhookProcess

SA = """apiVersion: v1
kind: ServiceAccount
metadata: {name: sa, namespace: ns, annotations: {azure.workload.identity/client-id: x}}
"""
WI = "azure.workload.identity"

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False),
                    st.text(max_size=50), st.sampled_from(["", "true", "false", "sa", "default", "app", "3600",
                                                           "\u0000", "é☃", "a" * 5000]))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=20), inner, max_size=4)),
                           max_leaves=25)
names = st.one_of(st.sampled_from(["app", "sidecar", "azwi-proxy", "azwi-proxy-init", ""]), json_values)
annotation_keys = st.sampled_from([f"{WI}/skip-containers", f"{WI}/inject-proxy-sidecar",
                                   f"{WI}/proxy-sidecar-port", f"{WI}/service-account-token-expiration", "x"])
env_entries = st.one_of(st.fixed_dictionaries({"name": st.one_of(st.sampled_from(
    ["AZURE_CLIENT_ID", "AZURE_TENANT_ID", "OTHER"]), json_values)}, optional={"value": json_values,
                                                                                "valueFrom": json_values}),
    json_values)
containers = st.one_of(st.fixed_dictionaries({"name": names}, optional={
    "env": st.one_of(st.lists(env_entries, max_size=4), json_values),
    "volumeMounts": st.one_of(st.lists(json_values, max_size=3), json_values),
    "image": json_values, "restartPolicy": json_values}), json_values)
pods = st.fixed_dictionaries({}, optional={
    "apiVersion": json_values, "kind": st.one_of(st.just("Pod"), json_values),
    "metadata": st.one_of(st.fixed_dictionaries({}, optional={
        "name": names, "generateName": names, "namespace": names,
        "annotations": st.one_of(st.dictionaries(annotation_keys, st.one_of(st.text(max_size=30), json_values),
                                                 max_size=4), json_values),
        "labels": json_values}), json_values),
    "spec": st.one_of(st.fixed_dictionaries({}, optional={
        "serviceAccountName": st.one_of(st.just("sa"), json_values),
        "containers": st.one_of(st.lists(containers, max_size=3), json_values),
        "initContainers": st.one_of(st.lists(containers, max_size=3), json_values),
        "volumes": st.one_of(st.lists(json_values, max_size=3), json_values),
        "hostNetwork": json_values}), json_values),
})
requests = st.fixed_dictionaries({"uid": st.one_of(st.just("u"), json_values)}, optional={
    "namespace": st.one_of(st.just("ns"), json_values), "object": st.one_of(pods, json_values),
    "dryRun": json_values, "operation": json_values})
reviews = st.one_of(
    st.fixed_dictionaries({"apiVersion": st.sampled_from(["admission.k8s.io/v1", "admission.k8s.io/v1beta1"]),
                           "kind": st.just("AdmissionReview"), "request": requests}),
    st.fixed_dictionaries({}, optional={"apiVersion": json_values, "kind": json_values, "request": json_values}),
    json_values,
)
CASES = {"count": 0, "200": 0, "400": 0}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookProcess]:
    workdir = tmp_path_factory.mktemp("fuzz")
    (workdir / "sa.yaml").write_text(SA)
    process = WebhookProcess(workdir, ["--objects", str(workdir / "sa.yaml")])
    process.wait_ready()
    yield process
    assert process.stop() == 0, process.logs()[-3000:]
    assert "Traceback" not in process.logs()


def _check(server: WebhookProcess, review: Any, body: bytes) -> None:
    status, answer = server.post(body)
    CASES["count"] += 1
    CASES[str(status)] = CASES.get(str(status), 0) + 1
    assert status in (200, 400), (status, answer[:500])
    decoded = orjson.loads(answer)
    if status == 400:
        assert isinstance(decoded.get("error"), str) and decoded["error"]
        return
    response = decoded["response"]
    assert decoded["apiVersion"] == review["apiVersion"] and decoded["kind"] == "AdmissionReview"
    assert response["uid"] == review["request"]["uid"] and isinstance(response["allowed"], bool)
    if response["allowed"] and "patch" in response:
        patch = orjson.loads(base64.b64decode(response["patch"]))
        jsonpatch.apply_patch(copy.deepcopy(review["request"]["object"]), patch)  # applies cleanly
    if not response["allowed"]:
        assert response["status"]["message"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(review=reviews)
def test_fuzzed_reviews(server: WebhookProcess, review: Any) -> None:
    try:
        body = orjson.dumps(review)
    except (TypeError, orjson.JSONEncodeError):
        return  # not representable as JSON (e.g. integer too large for orjson): not a request
    _check(server, review, body)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=2000))
def test_fuzzed_bytes(server: WebhookProcess, raw: bytes) -> None:
    status, answer = server.post(raw)
    CASES["count"] += 1
    assert status == 400 or (status == 200 and b"AdmissionReview" in answer), (status, answer[:300])


def test_deep_nesting_and_huge_strings(server: WebhookProcess) -> None:
    status, answer = server.post(b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":'
                                 b'{"uid":"u","object":' + b"[" * 5000 + b"]" * 5000 + b"}}")
    assert status == 400 and b"JSON" in answer
    huge = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u", "namespace": "ns", "object": {"metadata": {"name": "é" * 1_000_000},
                                                  "spec": {"serviceAccountName": "sa"}}}}
    _check(server, huge, orjson.dumps(huge))
    assert server.get(server.health_port, "/healthz")[0] == 200


def test_fuzzing_reached_both_answers(server: WebhookProcess, capsys: pytest.CaptureFixture[str]) -> None:
    """The fuzzers above (run before this test) produced enough reviews, and both kinds of answer: reviews the
    webhook decided (200) and bodies it refused (400). A generator that only made one kind would test half."""
    with capsys.disabled():
        print(f"\nfuzz: {CASES['count']} cases through the HTTPS server "
              f"({CASES.get('200', 0)} answered 200, {CASES.get('400', 0)} answered 400, no other status)")
    assert CASES["count"] >= 400 and CASES.get("200", 0) > 0 and CASES.get("400", 0) > 0
