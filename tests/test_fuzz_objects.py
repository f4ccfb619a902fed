"""Hypothesis-generated ServiceAccounts, Namespaces and policy files (issue 18): every shape gets a clear answer,
never a crash. A ServiceAccount sent to the validator over HTTPS gets 200 or a 400 naming the field; read from
`--objects` files it loads or raises ManifestError naming the file, document and field; a policy file loads or
raises PolicyError."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.processes import WebhookProcess
from tests.test_fuzz import SA, json_values
from webhook.policy.file import load_policy
from webhook.policy.schema import PolicyError
from webhook.sources.manifests import Manifest, ManifestError, ObjectShapeError, service_account_info
from webhook.sources.serviceaccounts import StaticServiceAccounts, namespace_info

WI = "azure.workload.identity"
strings = st.one_of(st.sampled_from(["sa", "ns", "", f"{WI}/client-id", f"{WI}/tenant-id", "x" * 300]),
                    st.text(max_size=30))
identity = st.dictionaries(st.sampled_from([f"{WI}/client-id", f"{WI}/tenant-id",
                                            f"{WI}/service-account-token-expiration", f"{WI}/use", "other"]),
                           st.one_of(strings, json_values), max_size=4)
metadata = st.one_of(st.fixed_dictionaries({}, optional={
    "name": st.one_of(strings, json_values), "namespace": st.one_of(strings, json_values),
    "resourceVersion": st.one_of(strings, json_values),
    "annotations": st.one_of(identity, json_values), "labels": st.one_of(identity, json_values)}), json_values)
objects = st.fixed_dictionaries({"kind": st.sampled_from(["ServiceAccount", "Namespace"])},
                                optional={"apiVersion": json_values, "metadata": metadata})

modes = st.sampled_from(["enforce", "warn", "audit", "off", "bogus"])
policies = st.one_of(
    st.fixed_dictionaries({}, optional={
        "apiVersion": st.one_of(st.just("wi-webhook.io/v1"), json_values),
        "kind": st.one_of(st.just("Policy"), json_values),
        "modes": st.one_of(st.dictionaries(st.sampled_from(["WI001", "WI005", "missing-client-id", "x"]),
                                           st.one_of(modes, json_values), max_size=3), json_values),
        "tokenExpiration": st.one_of(st.fixed_dictionaries({}, optional={"min": json_values, "max": json_values}),
                                     json_values),
        "namespaces": st.one_of(st.fixed_dictionaries({}, optional={"deny": json_values, "allow": json_values}),
                                json_values),
        "identities": st.one_of(st.lists(st.one_of(st.fixed_dictionaries({}, optional={
            "clientId": json_values, "namespaces": json_values}), json_values), max_size=3), json_values),
        "namespaceOverrides": json_values}),
    json_values)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookProcess]:
    workdir = tmp_path_factory.mktemp("fuzz-objects")
    (workdir / "sa.yaml").write_text(SA)
    process = WebhookProcess(workdir, ["--objects", str(workdir / "sa.yaml")])
    process.wait_ready()
    yield process
    assert process.stop() == 0, process.logs()[-3000:]
    assert "Traceback" not in process.logs()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(obj=objects)
def test_fuzzed_service_accounts_through_the_validator(server: WebhookProcess, obj: dict[str, Any]) -> None:
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
              "request": {"uid": "u", "namespace": "ns", "operation": "CREATE", "object": obj}}
    try:
        body = orjson.dumps(review)
    except (TypeError, orjson.JSONEncodeError):
        return
    conn = server.connection()
    try:
        conn.request("POST", "/validate-v1-serviceaccount", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        status, answer = response.status, orjson.loads(response.read())
    finally:
        conn.close()
    assert status in (200, 400), (status, answer)
    if status == 400:
        assert answer["error"]
    else:
        assert answer["response"]["uid"] == "u" and isinstance(answer["response"]["allowed"], bool)


@settings(max_examples=400, deadline=None)
@given(obj=objects)
def test_fuzzed_objects_files(obj: dict[str, Any]) -> None:
    manifest = Manifest(obj, "objects.yaml", 2, 7)
    try:
        source = StaticServiceAccounts.from_manifests([manifest])
    except ManifestError as exc:
        assert str(exc).startswith(f"objects.yaml: document 3 (line 7, {obj['kind']}): metadata")
        return
    assert len(source) in (0, 1)
    try:
        (service_account_info if obj["kind"] == "ServiceAccount" else namespace_info)(obj)
    except ObjectShapeError:
        pytest.fail("from_manifests accepted what service_account_info/namespace_info refuse")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=policies)
def test_fuzzed_policy_files(tmp_path: Path, document: Any) -> None:
    path = tmp_path / "policy.yaml"
    try:
        path.write_text(yaml.safe_dump(document))
    except (yaml.YAMLError, UnicodeEncodeError, ValueError):
        return
    try:
        load_policy(path)
    except PolicyError as exc:
        assert str(exc)
