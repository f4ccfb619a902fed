"""The per-request admission path: parse the AdmissionReview, find the pod's ServiceAccount, call the pure core,
record metrics and logs, answer.

Kept apart from the HTTP server (serving/server.py), so that tests and benchmarks can call it in process. Nothing is
logged above debug on success; every denial is logged with its reason. A failure of our own code still gets an
AdmissionReview back (a denial naming the uid), with the traceback in the log and an `error` in the metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from webhook.core.model import Denial, MutationConfig, MutationResult
from webhook.core.shape import display_name, read_pod
from webhook.policy.evaluate import (
    Decision,
    admission_warnings,
    admit,
    audit_annotations_for,
    check_service_account,
    enforce_denial,
)
from webhook.policy.file import PolicyFile
from webhook.policy.rules import Finding, Mode
from webhook.serving.admission import BadReview, ReviewRequest, internal_error_review, parse_review, review_response
from webhook.serving.metrics import Metrics
from webhook.sources.manifests import ObjectShapeError, service_account_info
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
        """Answer one AdmissionReview for a pod; raises BadReview for a body that is not one (HTTP 400)."""
        return await self._answer(body, self._review_pod)

    async def validate_service_account(self, body: bytes) -> bytes:
        """The optional ServiceAccount validator: the rules that check ServiceAccounts, at `kubectl apply` time."""
        return await self._answer(body, self._review_service_account)

    async def _answer(self, body: bytes, answer: Callable[[ReviewRequest], Awaitable[bytes]]) -> bytes:
        request = parse_review(body)
        started = time.perf_counter()
        try:
            return await answer(request)
        except BadReview:
            raise
        except Exception:  # our own bug: the API server still gets an AdmissionReview, the log the traceback
            log.exception("internal error answering a review", extra={
                "uid": request.uid, "namespace": request.namespace, "object": display_name(request.object)})
            self.metrics.admission.of("error", request.namespace).observe(time.perf_counter() - started)
            return internal_error_review(body)

    async def _review_pod(self, request: ReviewRequest) -> bytes:
        started = time.perf_counter()
        decision = await self._decide(request)
        result = decision.result
        outcome = "denied" if result.denial is not None else "mutated" if result.patch else "skipped"
        name = display_name(request.object)
        self._record(decision.findings, request.uid, request.namespace, name)
        if result.denial is not None:
            log.warning("pod denied", extra={"uid": request.uid, "namespace": request.namespace, "pod": name,
                                            "reason": result.denial.reason, "error": result.denial.message,
                                            "dry-run": request.dry_run})
        else:
            log.debug("pod reviewed", extra={"uid": request.uid, "namespace": request.namespace, "pod": name,
                                             "decision": outcome, "containers": result.injected_containers,
                                             "skipped": result.skipped_containers, "dry-run": request.dry_run})
        reply = review_response(request, result, decision.warnings, decision.audit_annotations)
        self.metrics.admission.of(outcome, request.namespace).observe(time.perf_counter() - started)
        if request.dry_run:  # sideEffects: None — nothing else differs for a dry run
            self.metrics.dry_run(outcome).inc()
        return reply

    async def _decide(self, request: ReviewRequest) -> Decision:
        """Check the pod's shape, find its ServiceAccount, then let the pure core decide."""
        pod = request.object
        ref = read_pod(pod, request.namespace)
        if isinstance(ref, Denial):
            return Decision(MutationResult(denial=ref))
        lookup = await self.source.get(ref.namespace, ref.service_account)
        if lookup.error:
            return Decision(MutationResult(denial=Denial(
                f"failed to get service account {ref.namespace}/{ref.service_account}: {lookup.error} "
                "(the API server could not be reached in time; retry the request)",
                reason="ServiceAccountLookupFailed", code=500)))
        policy = self.policy.current
        namespace_info = await self.source.namespace(ref.namespace) if policy.namespace_overrides else None
        return admit(pod, ref, lookup.sa, self.config, policy, namespace_info)

    async def _review_service_account(self, request: ReviewRequest) -> bytes:
        obj = request.object
        findings: list[Finding] = []
        if isinstance(obj, dict) and obj.get("kind") in (None, "ServiceAccount"):
            try:
                sa = service_account_info(obj, request.namespace or "default")
            except ObjectShapeError as exc:
                raise BadReview(f"AdmissionReview.request.object: {exc}") from None
            policy = self.policy.current
            namespace_info = await self.source.namespace(sa.namespace) if policy.namespace_overrides else None
            findings = check_service_account(sa, policy, namespace_info)
            self._record(findings, request.uid, sa.namespace, sa.name)
        result = MutationResult(denial=enforce_denial(findings))
        return review_response(request, result, admission_warnings(findings), audit_annotations_for(findings))

    def _record(self, findings: list[Finding], uid: str, namespace: str, name: str) -> None:
        for finding in findings:
            self.metrics.findings.labels(finding.rule_id, finding.mode.value).inc()
            if finding.mode is Mode.AUDIT:
                log.info("policy audit finding", extra={"uid": uid, "namespace": namespace, "object": name,
                                                        "rule": finding.rule_id, "finding": finding.message})
