"""Remembered decisions (webhook/decisions.py): identical pods share an answer, and only while every input is the
very same object. A changed ServiceAccount, namespace or policy, or a different namespace, is always recomputed.
The answer with the cache equals the answer without it for any review."""

from __future__ import annotations

import asyncio
import base64
import copy
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from tests.support import CLIENT, annotated_sa, config, pod
from tests.test_fuzz import reviews
from webhook.admission import BadReview
from webhook.decisions import DecisionCache
from webhook.handler import AdmissionHandler
from webhook.metrics import Metrics
from webhook.mutation import ServiceAccountInfo, pod_ref, volume_name_for
from webhook.policy import NamespaceInfo
from webhook.policyfile import PolicyFile
from webhook.serviceaccounts import Lookup, StaticServiceAccounts


class Source(StaticServiceAccounts):
    """A static source whose ServiceAccounts and Namespaces the test replaces, as the watch would."""

    def __init__(self, accounts: list[ServiceAccountInfo], live: bool = False) -> None:
        super().__init__(accounts)
        self.live = live
        self.lookups = 0

    def cached(self, namespace: str, name: str) -> Lookup | None:
        return None  # every lookup goes through get(), which counts it

    async def get(self, namespace: str, name: str) -> Lookup:
        self.lookups += 1
        found = self.lookup(namespace, name)
        return Lookup(found.sa, "live") if self.live and found.sa else found

    def set_namespace(self, info: NamespaceInfo) -> None:
        self._namespaces[info.name] = info


def review(obj: Any, uid: str, namespace: str = "ns") -> bytes:
    return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                         "request": {"uid": uid, "namespace": namespace, "operation": "CREATE", "object": obj}})


def answer(handler: AdmissionHandler, obj: Any, uid: str = "u", namespace: str = "ns") -> dict[str, Any]:
    response: dict[str, Any] = orjson.loads(asyncio.run(handler.review(review(obj, uid, namespace))))["response"]
    assert response["uid"] == uid
    return response


def hits(handler: AdmissionHandler, result: str = "hit") -> float:
    value = handler.metrics.registry.get_sample_value("wi_webhook_decision_cache_total", {"result": result})
    return value or 0.0


def client_id(response: dict[str, Any]) -> str:
    patch = orjson.loads(base64.b64decode(response["patch"]))
    env = next(op["value"] for op in patch if op["path"] == "/spec/containers/0/env")
    return str(next(e["value"] for e in env if e["name"] == "AZURE_CLIENT_ID"))


def handler_with(source: Source, policy: PolicyFile | None = None, size: int = 512) -> AdmissionHandler:
    return AdmissionHandler(config(), source, Metrics(), policy or PolicyFile(None), DecisionCache(size))


def burst_pod(generate_name: str = "app-7d9f8c-", namespace: str | None = "ns") -> dict[str, Any]:
    """A ReplicaSet's pod: named by the API server after admission."""
    obj = pod(None, namespace=namespace,
              annotations={"azure.workload.identity/service-account-token-expiration": "7200"})
    obj["metadata"]["generateName"] = generate_name
    return obj


def test_identical_pods_share_the_answer_with_their_own_uid() -> None:
    handler = handler_with(Source([annotated_sa()]))
    first = answer(handler, burst_pod(), uid="a")
    second = answer(handler, burst_pod(), uid="b")
    assert hits(handler) == 1 and hits(handler, "miss") == 1
    assert {**first, "uid": "b"} == second
    assert handler.metrics.registry.get_sample_value("wi_webhook_admission_requests_total",
                                                     {"decision": "mutated", "namespace": "ns"}) == 2


def test_managed_fields_timestamps_do_not_split_a_burst() -> None:
    """The API server stamps managedFields with the second of the request: identical pods still share a decision,
    and it is the one a fresh computation gives."""
    handler = handler_with(Source([annotated_sa()]))
    first, second = burst_pod(), burst_pod()
    for obj, second_of in ((first, "24"), (second, "25")):
        obj["metadata"]["managedFields"] = [{"manager": "kube-controller-manager", "operation": "Update",
                                             "apiVersion": "v1", "time": f"2026-11-27T21:26:{second_of}Z",
                                             "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}]
    kept = copy.deepcopy(second)
    answer(handler, first, uid="a")
    remembered = answer(handler, second, uid="b")
    assert hits(handler) == 1 and second == kept  # the request's own pod is not modified
    assert remembered == answer(handler_with(Source([annotated_sa()]), size=0), second, uid="b")


def with_token_volume(obj: dict[str, Any], name: str) -> dict[str, Any]:
    """What kube-apiserver's ServiceAccount admission plugin adds before any webhook runs."""
    obj["spec"].setdefault("volumes", []).append({"name": name, "projected": {"sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}})
    for container in obj["spec"]["containers"]:
        container.setdefault("volumeMounts", []).append(
            {"name": name, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True})
    return obj


@pytest.mark.parametrize("mount_ours", [False, True])
def test_generated_token_volume_names_do_not_split_a_burst(mount_ours: bool) -> None:
    """Every pod gets its own `kube-api-access-xxxxx` volume; the remembered answer is still the computed one,
    also when such a name sits next to a mount the webhook replaces."""
    handler = handler_with(Source([annotated_sa()]))
    fresh = handler_with(Source([annotated_sa()]), size=0)
    responses = []
    for uid, suffix in (("a", "bcdfg"), ("b", "z2456"), ("c", "qrstv")):
        obj = with_token_volume(burst_pod(), f"kube-api-access-{suffix}")
        if mount_ours:  # a stale mount at the webhook's own path and volume name: replaced, not appended
            ours = volume_name_for(pod_ref(obj, "ns").name)
            obj["spec"]["containers"][0]["volumeMounts"].insert(0, {"name": ours, "mountPath": "/old"})
        kept = copy.deepcopy(obj)
        responses.append(answer(handler, obj, uid=uid))
        assert obj == kept
        assert responses[-1] == answer(fresh, obj, uid=uid)
    assert hits(handler) == 2


def test_names_that_only_look_generated_are_part_of_the_key() -> None:
    handler = handler_with(Source([annotated_sa()]))
    for uid, name in (("a", "kube-api-access-bcdfg"), ("b", "kube-api-access-abcde"), ("c", "kube-api-access-x"),
                      ("d", "token")):
        answer(handler, with_token_volume(burst_pod(), name), uid=uid)
    assert hits(handler) == 0 and len(handler.decisions) == 4


def stamped(obj: dict[str, Any], second: str) -> dict[str, Any]:
    obj["metadata"]["managedFields"] = [{"manager": "kube-controller-manager", "operation": "Update",
                                         "apiVersion": "v1", "time": f"2026-11-27T21:26:{second}Z",
                                         "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}]
    return obj


def twice(variant: Any) -> tuple[AdmissionHandler, list[dict[str, Any]]]:
    """Two reviews of a burst (own uid, managedFields second and token volume name each), made by `variant`;
    returns the remembering handler and both answers, each checked against a fresh computation."""
    handler = handler_with(Source([annotated_sa()]))
    fresh = handler_with(Source([annotated_sa()]), size=0)
    answers = []
    for uid, second, suffix in (("a", "24", "bcdfg"), ("b", "25", "z2456")):
        obj = variant(stamped(with_token_volume(burst_pod(), f"kube-api-access-{suffix}"), second),
                      f"kube-api-access-{suffix}", f"2026-11-27T21:26:{second}Z", uid)
        answers.append(answer(handler, obj, uid=uid))
        assert answers[-1] == answer(fresh, obj, uid=uid)
    return handler, answers


def test_a_burst_differing_in_uid_timestamp_and_token_volume_is_remembered() -> None:
    handler, _ = twice(lambda obj, name, stamp, uid: obj)
    assert hits(handler) == 1


@pytest.mark.parametrize("where", ["container name", "annotation value", "env value", "time annotation",
                                   "uid annotation", "mask as a name"])
def test_a_masked_text_found_elsewhere_is_not_remembered(where: str) -> None:
    """The uid, timestamp and token volume name are masked in the review's bytes only where the parsed review
    proves each is the field itself: the same text anywhere else (which the answer may depend on, or carry)
    makes the review unremembered, and the answer is the computed one."""
    def variant(obj: dict[str, Any], name: str, stamp: str, uid: str) -> dict[str, Any]:
        container = obj["spec"]["containers"][0]
        annotations = obj["metadata"]["annotations"]
        if where == "container name":
            container["name"] = name
        elif where == "annotation value":
            annotations["azure.workload.identity/skip-containers"] = name
        elif where == "env value":
            container["env"] = [{"name": "AZURE_CLIENT_ID", "value": name}]
        elif where == "time annotation":
            annotations["time"] = stamp
        elif where == "uid annotation":
            annotations["uid"] = uid
        else:
            obj["spec"]["volumes"].append({"name": "kube-api-access-*", "emptyDir": {}})
        return obj

    handler, _ = twice(variant)
    assert hits(handler) == 0 and len(handler.decisions) == 0


def test_a_review_encoded_another_way_is_answered_but_not_remembered() -> None:
    import json

    handler = handler_with(Source([annotated_sa()]))
    for uid in ("a", "b"):
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                           "request": {"uid": uid, "namespace": "ns", "operation": "CREATE",
                                       "object": burst_pod()}}).encode()  # ", " and ": " separators
        response = orjson.loads(asyncio.run(handler.review(body)))["response"]
        assert response["uid"] == uid and response["allowed"] is True and client_id(response) == CLIENT
    assert hits(handler) == 0 and len(handler.decisions) == 0


def test_a_review_over_16_kib_is_computed_not_remembered() -> None:
    """Keying a large review (masking, hashing) costs more than computing its decision."""
    handler = handler_with(Source([annotated_sa()]), size=512)
    fresh = handler_with(Source([annotated_sa()]), size=0)
    obj = burst_pod()
    obj["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = "x" * 17_000
    assert [answer(handler, obj, uid=uid) for uid in "ab"] == [answer(fresh, obj, uid=uid) for uid in "ab"]
    assert hits(handler) == 0 and len(handler.decisions) == 0
    obj["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = "x" * 8_000
    answer(handler, obj, uid="c")
    answer(handler, obj, uid="d")
    assert hits(handler) == 1


def test_a_changed_service_account_is_recomputed() -> None:
    source = Source([annotated_sa()])
    handler = handler_with(source)
    assert client_id(answer(handler, burst_pod())) == CLIENT
    other = "99999999-8888-7777-6666-555555555555"
    source.add(annotated_sa(client_id=other))  # the watch delivered a new version: a new object
    assert client_id(answer(handler, burst_pod())) == other
    source.add(annotated_sa(client_id=other))  # equal content, new object: recomputed, same answer
    assert client_id(answer(handler, burst_pod())) == other
    assert hits(handler) == 0 and hits(handler, "miss") == 3


def test_a_deleted_service_account_denies_the_next_identical_pod() -> None:
    source = Source([annotated_sa()])
    handler = handler_with(source)
    assert answer(handler, burst_pod())["allowed"] is True
    source._store.clear()
    denied = answer(handler, burst_pod())
    assert denied["allowed"] is False and denied["status"]["message"] == 'serviceaccounts "sa" not found'


def test_namespace_overrides_and_policy_reload_are_recomputed(tmp_path: Path) -> None:
    source = Source([annotated_sa(client_id="not-a-guid")])
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text("apiVersion: wi-webhook.io/v1\nkind: Policy\nmodes: {WI002: warn}\n")
    handler = handler_with(source, PolicyFile(str(policy_path)))
    assert any("WI002" in w for w in answer(handler, burst_pod())["warnings"])
    assert any("WI002" in w for w in answer(handler, burst_pod())["warnings"])
    assert hits(handler) == 1
    source.set_namespace(NamespaceInfo("ns", labels={"wi-webhook/enforce": "WI002"}))
    assert answer(handler, burst_pod())["allowed"] is False
    source.set_namespace(NamespaceInfo("ns"))
    assert answer(handler, burst_pod())["allowed"] is True
    policy_path.write_text("apiVersion: wi-webhook.io/v1\nkind: Policy\nmodes: {WI002: enforce}\n")
    assert handler.policy.refresh()
    assert answer(handler, burst_pod())["allowed"] is False
    assert hits(handler) == 1


def test_same_pod_in_another_namespace_is_its_own_entry() -> None:
    handler = handler_with(Source([annotated_sa(), annotated_sa(namespace="other")]))
    obj = burst_pod(namespace=None)
    answer(handler, obj, namespace="ns")
    other = answer(handler, obj, namespace="other")
    assert hits(handler) == 0
    patch = orjson.loads(base64.b64decode(other["patch"]))
    assert {"op": "add", "path": "/metadata/namespace", "value": "other"} in patch


def test_denials_and_audit_findings_are_logged_for_every_request(caplog: pytest.LogCaptureFixture,
                                                                 tmp_path: Path) -> None:
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text("apiVersion: wi-webhook.io/v1\nkind: Policy\nmodes: {WI002: audit}\n")
    source = Source([annotated_sa(client_id="not-a-guid")])
    handler = handler_with(source, PolicyFile(str(policy_path)))
    caplog.set_level(logging.INFO)
    for uid in ("a", "b", "c"):
        assert "auditAnnotations" in answer(handler, burst_pod(), uid=uid)
    audits = [r for r in caplog.records if r.getMessage() == "policy audit finding"]
    assert [r.__dict__["uid"] for r in audits] == ["a", "b", "c"]
    bad = burst_pod()
    bad["metadata"]["annotations"]["azure.workload.identity/service-account-token-expiration"] = "60"
    for uid in ("d", "e"):
        assert answer(handler, bad, uid=uid)["allowed"] is False
    denials = [r for r in caplog.records if r.getMessage() == "pod denied"]
    assert [r.__dict__["uid"] for r in denials] == ["d", "e"]
    assert hits(handler) == 3  # b, c and e
    assert handler.metrics.registry.get_sample_value("wi_webhook_policy_findings_total",
                                                     {"rule": "WI002", "mode": "audit"}) == 3


def test_named_pods_are_not_remembered() -> None:
    """A StatefulSet's or a hand-made pod has its own name: every one differs, so none is kept."""
    handler = handler_with(Source([annotated_sa()]))
    for uid in ("a", "b"):
        assert answer(handler, pod("web-0"), uid=uid)["allowed"] is True
    assert hits(handler) == 0 and len(handler.decisions) == 0


def test_live_lookups_are_not_remembered_and_the_size_can_be_zero() -> None:
    live = handler_with(Source([annotated_sa()], live=True))
    off = handler_with(Source([annotated_sa()]), size=0)
    for handler in (live, off):
        for uid in ("a", "b"):
            assert answer(handler, burst_pod(), uid=uid)["allowed"] is True
        assert hits(handler) == 0 and len(handler.decisions) == 0


def test_one_lookup_per_review_even_when_the_remembered_answer_is_stale() -> None:
    source = Source([annotated_sa()])
    handler = handler_with(source)
    answer(handler, burst_pod())
    source.add(annotated_sa())
    answer(handler, burst_pod())
    assert source.lookups == 2


def test_bad_pods_and_bad_reviews_still_answer_as_before() -> None:
    handler = handler_with(Source([annotated_sa()]))
    for uid in ("a", "b"):
        response = answer(handler, {"spec": []}, uid=uid)
        assert response["allowed"] is False and "couldn't decode pod" in response["status"]["message"]
    with pytest.raises(BadReview):
        asyncio.run(handler.review(b"{}"))
    assert hits(handler) == 0


def test_bounded_by_entries_and_bytes() -> None:
    cache = DecisionCache(max_entries=3, max_bytes=10_000)
    handler = AdmissionHandler(config(), Source([annotated_sa()]), Metrics(), PolicyFile(None), cache)
    for index in range(5):
        answer(handler, burst_pod(f"p{index}-"))
    assert len(cache) == 3
    assert cache.size_bytes <= 10_000
    answer(handler, burst_pod("p4-"))
    assert hits(handler) == 1  # the most recent entries are kept
    answer(handler, burst_pod("p0-"))
    assert hits(handler) == 1  # p0 was evicted
    huge = burst_pod("huge-")  # over a quarter of max_bytes: never held
    huge["metadata"]["annotations"]["note"] = "x" * 5000
    answer(handler, huge)
    answer(handler, huge)
    assert hits(handler) == 1 and all(len(key[1]) < 2500 for key in cache._entries)
    assert cache.size_bytes == sum(len(key[1]) for key in cache._entries)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(review_obj=reviews)
def test_answers_with_and_without_remembering_are_equal(review_obj: Any) -> None:
    """Any review, asked twice with different uids: the remembered answer is exactly the computed one."""
    sa = ServiceAccountInfo("ns", "sa", {"azure.workload.identity/client-id": CLIENT})
    remembering = handler_with(Source([sa]))
    fresh = handler_with(Source([sa]), size=0)
    body = orjson.dumps(review_obj)
    try:
        expected = asyncio.run(fresh.review(body))
    except BadReview:
        with pytest.raises(BadReview):
            asyncio.run(remembering.review(body))
        return
    assert asyncio.run(remembering.review(body)) == expected
    again = copy.deepcopy(review_obj)
    again["request"]["uid"] = "second-uid"
    obj = again["request"].get("object")
    if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict):  # only managedFields differs
        obj["metadata"]["managedFields"] = [{"manager": "other", "time": "2026-11-27T00:00:00Z"}]
    second = orjson.loads(asyncio.run(remembering.review(orjson.dumps(again))))
    computed = orjson.loads(asyncio.run(fresh.review(orjson.dumps(again))))
    assert second == computed
