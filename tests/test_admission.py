"""AdmissionReview envelope: both versions, uid echo, patch encoding, bad bodies."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import annotated_sa, config, mutate, pod
from webhook.core.model import Denial, MutationResult
from webhook.serving.admission import BadReview, parse_review, review_response
from webhook.serving.handler import AdmissionHandler
from webhook.sources.serviceaccounts import Lookup, StaticServiceAccounts


def review(version: str = "admission.k8s.io/v1", **request: Any) -> bytes:
    body = {"uid": "u-1", "namespace": "ns", "operation": "CREATE", "object": pod(), **request}
    return orjson.dumps({"apiVersion": version, "kind": "AdmissionReview", "request": body})


@pytest.mark.parametrize("version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_round_trip_in_request_version(version: str) -> None:
    request = parse_review(review(version, dryRun=True))
    assert request.dry_run and request.uid == "u-1" and request.namespace == "ns"
    result = mutate(request.object, request.namespace, annotated_sa(), config())
    answer = orjson.loads(review_response(request, result))
    assert answer["apiVersion"] == version and answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == "u-1" and response["allowed"] is True and response["patchType"] == "JSONPatch"
    assert orjson.loads(base64.b64decode(response["patch"])) == result.patch


def test_denial_and_empty_patch() -> None:
    request = parse_review(review())
    denied = orjson.loads(review_response(request, MutationResult(denial=Denial("nope", "R"))))["response"]
    assert denied == {"uid": "u-1", "allowed": False, "status": {"code": 400, "message": "nope", "reason": "R"}}
    empty = orjson.loads(review_response(request, MutationResult(), warnings=["w"]))["response"]
    assert empty == {"uid": "u-1", "allowed": True, "warnings": ["w"]}


@pytest.mark.parametrize("uid", ["u-1", 'quote " and \\ and \u2603 and \u0000'])
def test_reply_echoes_any_uid(uid: str) -> None:
    request = parse_review(review(uid=uid))
    answer = orjson.loads(review_response(request, MutationResult(denial=Denial("nope \"x\"", "R", 403))))
    assert answer == {"apiVersion": request.api_version, "kind": "AdmissionReview", "response": {
        "uid": uid, "allowed": False, "status": {"code": 403, "message": "nope \"x\"", "reason": "R"}}}


@pytest.mark.parametrize(("body", "message"), [
    (b"{", "not valid JSON"),
    (b"[]", "must be a JSON object"),
    (b'{"apiVersion":"v1","kind":"AdmissionReview"}', "apiVersion must be one of"),
    (b'{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}', "kind must be AdmissionReview"),
    (b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}', "request must be an object"),
    (b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}', "uid must be a non-empty"),
    (b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","namespace":1}}',
     "namespace must be a string"),
])
def test_bad_reviews(body: bytes, message: str) -> None:
    with pytest.raises(BadReview, match=message):
        parse_review(body)


json_ints = st.integers(-(2**63), 2**64 - 1)  # what orjson encodes
patches = st.lists(st.fixed_dictionaries({"op": st.sampled_from(["add", "replace"]), "path": st.text(max_size=30),
                                          "value": st.one_of(st.text(), json_ints, st.booleans())}), max_size=4)


@settings(max_examples=300, deadline=None)
@given(patch=patches, denied=st.booleans(), warnings=st.lists(st.text(max_size=40), max_size=3),
       audit=st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=3))
def test_reply_fields(patch: list[dict[str, Any]], denied: bool, warnings: list[str], audit: dict[str, str]) -> None:
    """A denial carries its status and no patch; an allow carries the base64 JSON patch only when it is not empty;
    warnings and audit annotations only when there are some."""
    denial = Denial("no \"way\" é", reason="R") if denied else None
    request = parse_review(review())
    reply = orjson.loads(review_response(request, MutationResult(patch=patch, denial=denial), warnings, audit))
    expected: dict[str, Any] = {"uid": "u-1", "allowed": not denied}
    if denial is not None:
        expected["status"] = {"code": 400, "message": denial.message, "reason": "R"}
    elif patch:
        expected |= {"patchType": "JSONPatch", "patch": base64.b64encode(orjson.dumps(patch)).decode()}
    if warnings:
        expected["warnings"] = warnings
    if audit:
        expected["auditAnnotations"] = audit
    assert reply["response"] == expected


class Unreachable(StaticServiceAccounts):
    """A source whose API server cannot be reached: every lookup is an error."""

    async def get(self, namespace: str, name: str) -> Lookup:
        return Lookup(None, "error", error="connection refused")


@pytest.mark.parametrize(("obj", "reason", "code"), [
    (pod(), "ServiceAccountLookupFailed", 500),
    # A malformed pod is denied as such before the lookup, naming the field.
    (pod(containers=[{"name": "a", "env": [{"name": 1}]}]), "BadPod", 400),
    (pod(containers=[{"name": "a", "volumeMounts": "x"}]), "BadPod", 400),
    (pod(containers=[{"name": 1}]), "BadPod", 400),
    # The first offending field in the check's order: a container's own lists before the next container.
    (pod(containers=[{"name": "a", "env": [5]}, {"name": 7}]), "BadPod", 400),
])
def test_lookup_failure_answers_500_after_the_shape_check(obj: Any, reason: str, code: int) -> None:
    handler = AdmissionHandler(config(), Unreachable([]))
    body = orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                         "request": {"uid": "u", "namespace": "ns", "operation": "CREATE", "object": obj}})
    response = orjson.loads(asyncio.run(handler.review(body)))["response"]
    assert response["allowed"] is False
    assert (response["status"]["reason"], response["status"]["code"]) == (reason, code)
    expected = mutate(obj, "ns", annotated_sa(), config()).denial
    if reason == "BadPod":
        assert expected is not None and response["status"]["message"] == expected.message
        if obj["spec"]["containers"][-1]["name"] == 7:
            assert expected.message == "couldn't decode pod: spec.containers[0].env[0] must be an object"
    else:
        assert "failed to get service account ns/sa: connection refused" in response["status"]["message"]


def test_a_review_without_namespace_looks_the_service_account_up_in_the_pods_namespace() -> None:
    """Documented difference: the reference would look in no namespace (and deny); the API server always sets
    request.namespace, so only hand-made reviews omit it."""
    account = annotated_sa()
    handler = AdmissionHandler(config(), StaticServiceAccounts([account]))
    body = orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                         "request": {"uid": "u", "operation": "CREATE", "object": pod(namespace=account.namespace)}})
    response = orjson.loads(asyncio.run(handler.review(body)))["response"]
    assert response["allowed"] is True and response["patchType"] == "JSONPatch"


def test_a_failing_core_still_answers_an_admission_review(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A bug in our own code must not become a plain-text 500: the API server gets a denial naming the review's uid
    (with failurePolicy Fail the user sees why), the log has the traceback with the uid, the metrics an error."""
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the core")

    monkeypatch.setattr("webhook.serving.handler.admit", broken)
    account = annotated_sa()
    handler = AdmissionHandler(config(), StaticServiceAccounts([account]))
    body = orjson.dumps({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {
        "uid": "uid-123", "namespace": "ns", "operation": "CREATE", "object": pod()}})
    with caplog.at_level(logging.ERROR, logger="webhook"):
        answer = orjson.loads(asyncio.run(handler.review(body)))
    assert answer["apiVersion"] == "admission.k8s.io/v1beta1" and answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == "uid-123" and response["allowed"] is False
    assert response["status"] == {"code": 500, "reason": "InternalError",
                                  "message": "internal error answering review uid-123, see the webhook's log"}
    [record] = [r for r in caplog.records if r.name == "webhook" and r.levelno == logging.ERROR]
    assert record.exc_info is not None and "a bug in the core" in str(record.exc_info[1])
    assert record.uid == "uid-123"
    assert handler.metrics.admission.of("error", "ns").count == 1


def test_dry_runs_are_answered_alike_and_counted_apart() -> None:
    """sideEffects: None — a dry run gets the same answer as a real admission; only the metrics tell them apart."""
    handler = AdmissionHandler(config(), StaticServiceAccounts([annotated_sa()]))

    def body(dry_run: bool) -> bytes:
        return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "u", "namespace": "ns", "operation": "CREATE", "dryRun": dry_run, "object": pod()}})

    real, dry = (orjson.loads(asyncio.run(handler.review(body(flag))))["response"] for flag in (False, True))
    assert real == dry and real["allowed"] is True and real["patch"]
    assert handler.metrics.admission.of("mutated", "ns").count == 2
    assert handler.metrics.dry_run("mutated").value == 1
