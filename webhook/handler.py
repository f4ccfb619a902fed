"""The per-request admission path: parse the AdmissionReview, find the pod's ServiceAccount, call the pure core,
record metrics and logs, answer.

Kept apart from the HTTP server (webhook/server.py) so that the compiled build compiles it along with the core: the
glue around the core runs for every review too. Nothing is logged above debug on success; every denial is logged
with its reason.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from webhook.admission import ReviewRequest, parse_review, response_body, review_response
from webhook.config import MutationConfig
from webhook.decisions import Answer, DecisionCache, Remembered
from webhook.manifests import service_account_info
from webhook.metrics import Metrics
from webhook.mutation import Denial, MutationResult, PodShapeError, bad_pod, pod_ref, shape_denial
from webhook.policy import Decision, Finding, Mode, admit, check_service_account, enforce_denial
from webhook.policyfile import PolicyFile
from webhook.serviceaccounts import ServiceAccountSource

log = logging.getLogger("webhook")


@dataclass
class AdmissionHandler:
    """Answers AdmissionReviews; shared by the HTTPS server and by tests that call it in process."""

    config: MutationConfig
    source: ServiceAccountSource
    metrics: Metrics = field(default_factory=Metrics)
    policy: PolicyFile = field(default_factory=lambda: PolicyFile(None))
    decisions: DecisionCache = field(default_factory=DecisionCache)

    async def review(self, body: bytes) -> bytes:
        """Answer one AdmissionReview body; raises BadReview for bodies that are not one (HTTP 400)."""
        started = time.perf_counter()
        request = parse_review(body)
        answer = await self._answer(body, request)
        decision = answer.decision
        if decision.findings:
            self._record(decision.findings, request.uid, request.namespace, _pod_name(request.pod))
        if decision.result.denial is not None:
            log.warning("pod denied", extra={"uid": request.uid, "namespace": request.namespace,
                                            "pod": _pod_name(request.pod), "reason": decision.result.denial.reason,
                                            "error": decision.result.denial.message, "dry-run": request.dry_run})
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("pod reviewed", extra={"uid": request.uid, "namespace": request.namespace,
                                             "pod": _pod_name(request.pod), "decision": answer.outcome,
                                             "containers": decision.result.injected_containers,
                                             "skipped": decision.result.skipped_containers})
        body_out = response_body(request, answer.tail)
        elapsed = time.perf_counter() - started
        self._observe(answer.outcome, request.namespace, elapsed)
        return body_out

    def _observe(self, outcome: str, namespace: str, elapsed: float) -> None:
        """Per-request metrics: plain numbers (webhook/stats.py), exported at scrape time."""
        self.metrics.admission.of(outcome, namespace).observe(elapsed)

    async def _answer(self, body: bytes, request: ReviewRequest) -> Answer:
        """The decision for this pod: remembered when an identical pod met the very same inputs (see
        webhook/decisions.py), computed by the pure core otherwise."""
        pod, namespace = request.pod, request.namespace
        key = self.decisions.key(body, request.uid, namespace, pod)
        entry = self.decisions.get(key) if key is not None else None
        if entry is not None:
            ref = entry.ref  # the same review bytes (but for the masks) and namespace: the same ref
        else:
            try:
                ref = pod_ref(pod, namespace, False)  # the env and mount entries are checked by mutate_pod's pass
            except PodShapeError as exc:  # the full check names the first offending field (maybe an entry)
                return Answer.of(Decision(MutationResult(denial=bad_pod(pod) or shape_denial(exc))))
        lookup = self.source.cached(ref.namespace, ref.service_account)
        if lookup is None:
            lookup = await self.source.get(ref.namespace, ref.service_account)
        if lookup.error:
            # A malformed pod is denied as such first, as when every field is checked before the lookup.
            return Answer.of(Decision(MutationResult(denial=bad_pod(pod) or Denial(
                f"failed to get service account {ref.namespace}/{ref.service_account}: {lookup.error} "
                "(the API server could not be reached in time; retry the request)",
                reason="ServiceAccountLookupFailed", code=500))))
        policy = self.policy.current
        namespace_info = await self.source.namespace(ref.namespace) if policy.namespace_overrides else None
        if entry is not None and entry.valid_for(lookup.sa, namespace_info, policy, self.config):
            self.metrics.decision_cache_hits.inc()
            return entry.answer
        answer = Answer.of(admit(pod, ref.namespace, lookup.sa, self.config, policy, namespace_info, ref))
        if key is not None and lookup.source == "cache" and lookup.sa is not None:
            self.metrics.decision_cache_misses.inc()
            self.decisions.put(key, Remembered(ref, lookup.sa, namespace_info, policy, self.config, answer))
        return answer

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


def _pod_name(pod: object) -> str:
    if isinstance(pod, dict) and isinstance(pod.get("metadata"), dict):
        metadata = pod["metadata"]
        return str(metadata.get("name") or f"{metadata.get('generateName') or ''}*")
    return ""
