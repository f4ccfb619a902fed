"""AdmissionReview envelope: both versions, uid echo, patch encoding, bad bodies."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import annotated_sa, config, pod
from webhook.admission import (
    BadReview,
    decision_tail,
    parse_review,
    response_body,
    response_fields,
    response_tail,
    review_response,
)
from webhook.handler import AdmissionHandler
from webhook.mutation import Denial, MutationResult, mutate_pod
from webhook.serviceaccounts import Lookup, StaticServiceAccounts


def review(version: str = "admission.k8s.io/v1", **request: Any) -> bytes:
    body = {"uid": "u-1", "namespace": "ns", "operation": "CREATE", "object": pod(), **request}
    return orjson.dumps({"apiVersion": version, "kind": "AdmissionReview", "request": body})


@pytest.mark.parametrize("version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_round_trip_in_request_version(version: str) -> None:
    request = parse_review(review(version, dryRun=True))
    assert request.dry_run and request.uid == "u-1" and request.namespace == "ns"
    result = mutate_pod(request.pod, request.namespace, annotated_sa(), config())
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
def test_spliced_reply_is_exactly_the_encoded_review(uid: str) -> None:
    """The reply is assembled from the encoded uid and a per-decision tail; it must equal encoding it whole."""
    request = parse_review(review(uid=uid))
    for result, warnings, audit in ((mutate_pod(request.pod, "ns", annotated_sa(), config()), ["w"], {"k": "v"}),
                                    (MutationResult(denial=Denial("nope \"x\"", "R", 403)), None, None),
                                    (MutationResult(), None, None)):
        fields = response_fields(result, warnings, audit)
        expected = orjson.dumps({"apiVersion": request.api_version, "kind": "AdmissionReview",
                                 "response": {"uid": uid, **fields}})
        assert review_response(request, result, warnings, audit) == expected
        assert response_body(request, response_tail(fields)) == expected


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
def test_decision_tail_is_the_generic_encoding_byte_for_byte(patch: list[dict[str, Any]], denied: bool,
                                                             warnings: list[str], audit: dict[str, str]) -> None:
    denial = Denial("no \"way\" é", reason="R") if denied else None
    result = MutationResult.from_patch(patch, denial=denial)
    assert result.patch == patch and result.patch_json == orjson.dumps(patch)
    expected: dict[str, Any] = {"allowed": not denied}
    if denial is not None:
        expected["status"] = {"code": 400, "message": denial.message, "reason": "R"}
    elif patch:
        expected |= {"patchType": "JSONPatch", "patch": base64.b64encode(orjson.dumps(patch)).decode()}
    if warnings:
        expected["warnings"] = warnings
    if audit:
        expected["auditAnnotations"] = audit
    assert decision_tail(result, warnings, audit) == response_tail(response_fields(result, warnings, audit)) \
        == b"," + orjson.dumps(expected)[1:] + b"}"


class Unreachable(StaticServiceAccounts):
    """A source whose API server cannot be reached: every lookup is an error."""

    def cached(self, namespace: str, name: str) -> Lookup | None:
        return None

    async def get(self, namespace: str, name: str) -> Lookup:
        return Lookup(None, "error", error="connection refused")


@pytest.mark.parametrize(("obj", "reason", "code"), [
    (pod(), "ServiceAccountLookupFailed", 500),
    # The server leaves env and mount entries to the mutation's pass (pod_ref(..., entries=False)); a malformed pod
    # is still denied as such before a lookup failure, naming the field, as when every field is checked first.
    (pod(containers=[{"name": "a", "env": [{"name": 1}]}]), "BadPod", 400),
    (pod(containers=[{"name": "a", "volumeMounts": "x"}]), "BadPod", 400),
    (pod(containers=[{"name": 1}]), "BadPod", 400),
])
def test_lookup_failure_answers_500_after_the_shape_check(obj: Any, reason: str, code: int) -> None:
    handler = AdmissionHandler(config(), Unreachable([]))
    body = orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                         "request": {"uid": "u", "namespace": "ns", "operation": "CREATE", "object": obj}})
    response = orjson.loads(asyncio.run(handler.review(body)))["response"]
    assert response["allowed"] is False
    assert (response["status"]["reason"], response["status"]["code"]) == (reason, code)
    expected = mutate_pod(obj, "ns", annotated_sa(), config()).denial
    if reason == "BadPod":
        assert expected is not None and response["status"]["message"] == expected.message
    else:
        assert "failed to get service account ns/sa: connection refused" in response["status"]["message"]
