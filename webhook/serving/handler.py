"""The per-request admission path: parse the AdmissionReview, find the pod's ServiceAccount, call the pure core,
record metrics and logs, answer.

Kept apart from the HTTP server (serving/server.py), so that tests and benchmarks can call it in process. Nothing is
logged above debug on success; every denial is logged with its reason.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from webhook.cli.config import MutationConfig
from webhook.core.mutation import Denial, MutationResult, PodShapeError, bad_pod, pod_ref, shape_denial
from webhook.policy.evaluate import Decision, Finding, Mode, admit, check_service_account, enforce_denial
from webhook.policy.file import PolicyFile
from webhook.serving.admission import ReviewRequest, parse_review, review_response
from webhook.serving.metrics import Metrics
from webhook.sources.manifests import service_account_info
from webhook.sources.serviceaccounts import ServiceAccountSource

log = logging.getLogger("webhook")


@dataclass
class AdmissionHandler:
    """Answers AdmissionReviews; shared by the HTTPS server and by tests that call it in process."""

    config: MutationConfig
    source: ServiceAccountSource
    metrics: Metrics = field(default_factory=Metrics)
    policy: PolicyFile = field(default_factory=lambda: PolicyFile(None))

    async def review(self, body: bytes) -> bytes:
        """Answer one AdmissionReview body; raises BadReview for bodies that are not one (HTTP 400)."""
        started = time.perf_counter()
        request = parse_review(body)
        decision = await self._decide(request)
        result = decision.result
        outcome = _outcome(result)
        if decision.findings:
            self._record(decision.findings, request.uid, request.namespace, _pod_name(request.pod))
        if result.denial is not None:
            log.warning("pod denied", extra={"uid": request.uid, "namespace": request.namespace,
                                            "pod": _pod_name(request.pod), "reason": result.denial.reason,
                                            "error": result.denial.message, "dry-run": request.dry_run})
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("pod reviewed", extra={"uid": request.uid, "namespace": request.namespace,
                                             "pod": _pod_name(request.pod), "decision": outcome,
                                             "containers": result.injected_containers,
                                             "skipped": result.skipped_containers})
        reply = review_response(request, result, decision.warnings, decision.audit_annotations)
        self.metrics.admission.of(outcome, request.namespace).observe(time.perf_counter() - started)
        return reply

    async def _decide(self, request: ReviewRequest) -> Decision:
        """Check the pod's shape, find its ServiceAccount (cache first), then let the pure core decide."""
        pod = request.pod
        try:
            ref = pod_ref(pod, request.namespace, entries=False)  # admit's mutate_pod checks the rest
        except PodShapeError as exc:
            return Decision(MutationResult(denial=shape_denial(exc)))
        lookup = self.source.cached(ref.namespace, ref.service_account)
        if lookup is None:
            lookup = await self.source.get(ref.namespace, ref.service_account)
        if lookup.error:
            return Decision(MutationResult(denial=bad_pod(pod) or Denial(
                f"failed to get service account {ref.namespace}/{ref.service_account}: {lookup.error} "
                "(the API server could not be reached in time; retry the request)",
                reason="ServiceAccountLookupFailed", code=500)))
        policy = self.policy.current
        namespace_info = await self.source.namespace(ref.namespace) if policy.namespace_overrides else None
        return admit(pod, ref.namespace, lookup.sa, self.config, policy, namespace_info, ref)

    def _record(self, findings: list[Finding], uid: str, namespace: str, name: str) -> None:
        for finding in findings:
            self.metrics.findings.labels(finding.rule, finding.mode.value).inc()
            if finding.mode is Mode.AUDIT:
                log.info("policy audit finding", extra={"uid": uid, "namespace": namespace, "object": name,
                                                        "rule": finding.rule, "finding": finding.message})

    async def validate_service_account(self, body: bytes) -> bytes:
        """The optional ServiceAccount validator: WI002/WI003/WI007 at `kubectl apply` time."""
        request = parse_review(body)
        obj = request.pod
        result = MutationResult()
        findings: list[Finding] = []
        if isinstance(obj, dict) and obj.get("kind") in (None, "ServiceAccount"):
            sa = service_account_info(obj, request.namespace or "default")
            policy = self.policy.current
            namespace_info = await self.source.namespace(sa.namespace) if policy.namespace_overrides else None
            findings = check_service_account(sa, self.config, policy, namespace_info)
            self._record(findings, request.uid, sa.namespace, sa.name)
            result = MutationResult(denial=enforce_denial(findings))
        decision = Decision(result, findings)
        return review_response(request, result, decision.warnings, decision.audit_annotations)


def _outcome(result: MutationResult) -> str:
    """The `decision` label of the admission metrics (`error` is the server's, for a review it could not answer)."""
    if result.denial is not None:
        return "denied"
    return "mutated" if result.patch else "skipped"


def _pod_name(pod: object) -> str:
    if isinstance(pod, dict) and isinstance(pod.get("metadata"), dict):
        metadata = pod["metadata"]
        return str(metadata.get("name") or f"{metadata.get('generateName') or ''}*")
    return ""
