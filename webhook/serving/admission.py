"""AdmissionReview decoding and encoding (admission.k8s.io/v1 and v1beta1), without I/O.

The reply always uses the apiVersion of the request and echoes its uid, as the API server requires.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any

import orjson

from webhook.core.model import Denial, MutationResult

REVIEW_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
# The API server's uids are UUIDs (36 characters); the bound keeps a log line and the echoed reply small.
MAX_UID_LENGTH = 128
is_dns_label = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?").fullmatch


class BadReview(ValueError):
    """The body is not an AdmissionReview we can answer; becomes HTTP 400 with this message."""


@dataclass(slots=True)
class ReviewRequest:
    """The envelope fields of a request, and its object as raw JSON (a Pod, or a ServiceAccount for the validator),
    checked by whoever reads it."""

    api_version: str
    uid: str
    namespace: str
    operation: str
    dry_run: bool
    object: Any


def parse_review(body: bytes) -> ReviewRequest:
    """Decode and check the envelope (BadReview names what is wrong); the object is checked by its reader."""
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
    return ReviewRequest(api_version=api_version, uid=uid, namespace=namespace,
                         operation=operation if isinstance(operation, str) else "",
                         dry_run=request.get("dryRun") is True, object=request.get("object"))


def review_response(request: ReviewRequest, result: MutationResult, warnings: list[str] | None = None,
                    audit_annotations: dict[str, str] | None = None) -> bytes:
    """The AdmissionReview reply: the request's apiVersion, its uid, and the decision, encoded once."""
    response: dict[str, Any] = {"uid": request.uid, "allowed": result.denial is None}
    if result.denial is not None:
        response["status"] = {"code": result.denial.code, "message": result.denial.message,
                              "reason": result.denial.reason}
    elif result.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(orjson.dumps(result.patch)).decode()
    if warnings:
        response["warnings"] = warnings
    if audit_annotations:
        response["auditAnnotations"] = audit_annotations
    return orjson.dumps({"apiVersion": request.api_version, "kind": "AdmissionReview", "response": response})


def internal_error_review(body: bytes) -> bytes:
    """The answer when this webhook failed on a review (a bug): a denial naming the request's uid, so that the API
    server still gets an AdmissionReview (and the user a message) rather than a plain-text 500."""
    uid, api_version = _envelope_of(body)
    request = ReviewRequest(api_version=api_version, uid=uid, namespace="", operation="", dry_run=False, object=None)
    denial = Denial(f"internal error answering review {uid}, see the webhook's log", reason="InternalError", code=500)
    return review_response(request, MutationResult(denial=denial))


def uid_of(body: bytes) -> str:
    """The review's uid, or "" when the body has none (for logging a review we failed on)."""
    return _envelope_of(body)[0]


def _envelope_of(body: bytes) -> tuple[str, str]:
    """The uid and apiVersion of whatever the body holds, best effort: ("", admission.k8s.io/v1) when unreadable."""
    try:
        review = orjson.loads(body)
        uid = review["request"]["uid"]
        api_version = review.get("apiVersion")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return "", REVIEW_VERSIONS[0]
    return (uid if isinstance(uid, str) and len(uid) <= MAX_UID_LENGTH else "",
            api_version if api_version in REVIEW_VERSIONS else REVIEW_VERSIONS[0])
