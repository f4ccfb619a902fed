"""AdmissionReview decoding and encoding (admission.k8s.io/v1 and v1beta1), without I/O.

The reply always uses the apiVersion of the request and echoes its uid, as the API server requires.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson
from pybase64 import b64encode  # the base64 patch is most of an answer: SIMD, ~15x faster than binascii

from webhook.mutation import MutationResult

REVIEW_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
# The API server's uids are UUIDs (36 characters); the bound keeps a log line and the echoed reply small.
MAX_UID_LENGTH = 128
is_dns_label = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?").fullmatch


class BadReview(ValueError):
    """The body is not an AdmissionReview we can answer; becomes HTTP 400 with this message."""


class ReviewRequest:
    """The envelope fields of a request, and its object. (A plain class: one per review; see PodRef.)"""

    def __init__(self, api_version: str, uid: str, namespace: str, operation: str, dry_run: bool, pod: Any) -> None:
        self.api_version: Final = api_version
        self.uid: Final = uid
        self.namespace: Final = namespace
        self.operation: Final = operation
        self.dry_run: Final = dry_run
        self.pod: Final = pod


def parse_review(body: bytes) -> ReviewRequest:
    """Decode and check the envelope; the pod itself is checked by the mutation core."""
    try:
        review = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadReview(f"request body is not valid JSON: {exc}") from None
    if not isinstance(review, dict):
        raise BadReview("request body must be a JSON object (an AdmissionReview)")
    api_version = review.get("apiVersion")
    if api_version not in REVIEW_VERSIONS:
        raise BadReview(f"apiVersion must be one of {', '.join(REVIEW_VERSIONS)}, got {api_version!r}")
    if review.get("kind") != "AdmissionReview":
        raise BadReview(f"kind must be AdmissionReview, got {review.get('kind')!r}")
    request = review.get("request")
    if not isinstance(request, dict):
        raise BadReview("AdmissionReview.request must be an object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid or len(uid) > MAX_UID_LENGTH:
        raise BadReview(f"AdmissionReview.request.uid must be a non-empty string of at most {MAX_UID_LENGTH} "
                        "characters")
    namespace = request.get("namespace") or ""
    if not isinstance(namespace, str):
        raise BadReview("AdmissionReview.request.namespace must be a string")
    if namespace and (len(namespace) > 63 or not is_dns_label(namespace)):
        # It becomes a metric label, a log field and a ServiceAccount cache key: only what Kubernetes allows.
        shown = namespace if len(namespace) <= 80 else namespace[:80] + "..."
        raise BadReview(f"AdmissionReview.request.namespace {shown!r} is not a namespace name (a DNS-1123 label: "
                        "at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)")
    operation = request.get("operation") or ""
    # Positional: keyword arguments cost a generic call in the compiled build.
    return ReviewRequest(api_version, uid, namespace, operation if isinstance(operation, str) else "",
                         request.get("dryRun") is True, request.get("object"))


def review_response(request: ReviewRequest, result: MutationResult, warnings: list[str] | None = None,
                    audit_annotations: dict[str, str] | None = None) -> bytes:
    """Serialise the AdmissionReview reply for a mutation result."""
    return response_body(request, decision_tail(result, warnings, audit_annotations))


def response_fields(result: MutationResult, warnings: list[str] | None = None,
                    audit_annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """The AdmissionResponse without its uid: the part that depends only on the decision (remembered per pod)."""
    response: dict[str, Any] = {"allowed": result.denial is None}
    if result.denial is not None:
        response["status"] = {"code": result.denial.code, "message": result.denial.message,
                              "reason": result.denial.reason}
    elif result.encoded_ops:
        response["patchType"] = "JSONPatch"
        response["patch"] = b64encode(result.patch_json).decode("ascii")
    if warnings:
        response["warnings"] = warnings
    if audit_annotations:
        response["auditAnnotations"] = audit_annotations
    return response


def response_tail(fields: dict[str, Any]) -> bytes:
    """The encoded AdmissionResponse fields after the uid, encoded once per decision (see response_body)."""
    return b"," + orjson.dumps(fields)[1:] + b"}"


def decision_tail(result: MutationResult, warnings: list[str] | None = None,
                  audit_annotations: dict[str, str] | None = None) -> bytes:
    """`response_tail(response_fields(...))`, byte for byte, without encoding the base64 patch twice (it is most of
    the answer): the patch's base64 text needs no JSON escaping, so it is spliced in as it is."""
    if result.denial is not None or not result.encoded_ops:
        return response_tail(response_fields(result, warnings, audit_annotations))
    parts = [b',"allowed":true,"patchType":"JSONPatch","patch":"', b64encode(result.patch_json), b'"']
    if warnings:
        parts += (b',"warnings":', orjson.dumps(warnings))
    if audit_annotations:
        parts += (b',"auditAnnotations":', orjson.dumps(audit_annotations))
    parts.append(b"}}")
    return b"".join(parts)


def response_body(request: ReviewRequest, tail: bytes) -> bytes:
    """The AdmissionReview reply: the request's apiVersion, its uid, then the decision's encoded fields.

    Byte for byte what orjson gives for {"apiVersion", "kind", "response": {"uid", **fields}}; only the uid and the
    apiVersion are encoded per request.
    """
    return b"".join((b'{"apiVersion":', orjson.dumps(request.api_version), b',"kind":"AdmissionReview","response":'
                     b'{"uid":', orjson.dumps(request.uid), tail))
