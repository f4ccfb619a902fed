"""`wi-webhook serve`: the HTTPS admission endpoint, health and metrics listeners, and graceful shutdown.

The request path is: parse the AdmissionReview, find the pod's ServiceAccount, call the pure core, answer.
Nothing is logged above debug on success; every denial is logged with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from webhook.admission import BadReview, parse_review, response_body, review_response
from webhook.config import MutationConfig, ServeOptions, parse_addr
from webhook.constants import MUTATE_PATH, VALIDATE_SA_PATH
from webhook.decisions import Answer, DecisionCache, Remembered
from webhook.manifests import service_account_info
from webhook.metrics import Metrics
from webhook.mutation import Denial, MutationResult, PodShapeError, pod_ref
from webhook.policy import Decision, Finding, Mode, admit, check_service_account, enforce_denial
from webhook.policyfile import PolicyFile
from webhook.rotation import CertRotator
from webhook.serviceaccounts import ServiceAccountSource
from webhook.tls import ServingCertificate

log = logging.getLogger("webhook")


@dataclass
class AdmissionHandler:
    """Answers AdmissionReviews; shared by the HTTPS server and by tests that call it in process."""

    config: MutationConfig
    source: ServiceAccountSource
    metrics: Metrics = field(default_factory=Metrics)
    policy: PolicyFile = field(default_factory=lambda: PolicyFile(None))
    decisions: DecisionCache = field(default_factory=DecisionCache)
    _children: dict[tuple[str, str], tuple[Any, Any]] = field(default_factory=dict, init=False, repr=False)

    async def review(self, body: bytes) -> bytes:
        """Answer one AdmissionReview body; raises BadReview for bodies that are not one (HTTP 400)."""
        started = time.perf_counter()
        request = parse_review(body)
        answer = await self._answer(request.pod, request.namespace)
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
        """Per-request metrics; the labelled children are looked up once per (outcome, namespace)."""
        children = self._children.get((outcome, namespace))
        if children is None:
            children = (self.metrics.requests.labels(outcome, namespace),
                        self.metrics.reference_duration.labels(namespace, "webhook"))
            self._children[(outcome, namespace)] = children
        children[0].inc()
        self.metrics.duration.observe(elapsed)
        children[1].observe(elapsed)

    async def _answer(self, pod: object, namespace: str) -> Answer:
        """The decision for this pod: remembered when an identical pod met the very same inputs (see
        webhook/decisions.py), computed by the pure core otherwise."""
        key = self.decisions.key(namespace, pod)
        entry = self.decisions.get(key) if key is not None else None
        if entry is not None:
            ref = entry.ref  # identical pod bytes and namespace: the same ref
        else:
            try:
                ref = pod_ref(pod, namespace)
            except PodShapeError as exc:
                return Answer.of(Decision(MutationResult(denial=Denial(f"couldn't decode pod: {exc}",
                                                                       reason="BadPod"))))
        lookup = await self.source.get(ref.namespace, ref.service_account)
        if lookup.error:
            return Answer.of(Decision(MutationResult(denial=Denial(
                f"failed to get service account {ref.namespace}/{ref.service_account}: {lookup.error} "
                "(the API server could not be reached in time; retry the request)",
                reason="ServiceAccountLookupFailed", code=500))))
        policy = self.policy.current
        namespace_info = await self.source.namespace(ref.namespace) if policy.namespace_overrides else None
        if entry is not None and entry.valid_for(lookup.sa, namespace_info, policy, self.config):
            self.metrics.decision_cache.labels("hit").inc()
            return entry.answer
        answer = Answer.of(admit(pod, ref.namespace, lookup.sa, self.config, policy, namespace_info, ref))
        if key is not None and lookup.source == "cache" and lookup.sa is not None:
            self.metrics.decision_cache.labels("miss").inc()
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


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def webhook_app(handler: AdmissionHandler, max_request_bytes: int) -> web.Application:
    async def mutate(request: web.Request) -> web.Response:
        return await _answer(request, handler.review)

    async def validate_sa(request: web.Request) -> web.Response:
        return await _answer(request, handler.validate_service_account)

    async def _answer(request: web.Request, answer_with: Callable[[bytes], Awaitable[bytes]]) -> web.Response:
        if request.content_type != "application/json":
            return json_error(415, f"Content-Type must be application/json, got {request.content_type!r}")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return json_error(413, f"request body larger than the configured limit of {max_request_bytes} bytes "
                                   "(--max-request-bytes)")
        try:
            answer = await answer_with(body)
        except BadReview as exc:
            handler.metrics.requests.labels("error", "").inc()
            return json_error(400, str(exc))
        return web.Response(body=answer, content_type="application/json")

    app = web.Application(client_max_size=max_request_bytes)
    app.router.add_post(MUTATE_PATH, mutate)
    app.router.add_post(VALIDATE_SA_PATH, validate_sa)
    return app


@dataclass
class Health:
    """Readiness: certificates loaded AND ServiceAccounts synced, and not shutting down."""

    cert: ServingCertificate
    source: ServiceAccountSource
    rotator: CertRotator | None = None
    shutting_down: bool = False

    def ready(self) -> tuple[bool, str]:
        if self.shutting_down:
            return False, "shutting down"
        if self.rotator is not None and not self.rotator.done_once.is_set():
            return False, f"certs are not ready yet: rotator has not finished ({self.rotator.last_error or 'running'})"
        if not self.cert.loaded:
            return False, f"certs are not ready yet: {self.cert.last_error or 'waiting for tls.crt/tls.key'}"
        return self.source.ready()


def health_app(health: Health) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        ok, detail = health.ready()
        return web.Response(text=("ok: " if ok else "not ready: ") + detail, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def write_worker_state(options: ServeOptions, health: Health) -> None:
    """A worker's readiness, for the supervisor's /readyz (atomic replace; read by another process)."""
    if options.worker_state_dir is None:
        return
    ok, detail = health.ready()
    path = Path(options.worker_state_dir) / f"worker-{options.worker_index}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps({"ready": ok, "detail": detail, "time": time.time(), "pid": os.getpid()}))
    tmp.replace(path)


def metrics_app(metrics: Metrics) -> web.Application:
    async def scrape(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(metrics.registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app


async def start_site(app: web.Application, addr: tuple[str, int], *, ssl_context: ssl.SSLContext | None = None,
                     shutdown_timeout: float = 5.0, reuse_port: bool = False) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, addr[0] or None, addr[1], reuse_address=True, ssl_context=ssl_context,
                       shutdown_timeout=shutdown_timeout, reuse_port=reuse_port or None)
    await site.start()
    return runner


async def serve(options: ServeOptions, handler: AdmissionHandler, *, stop: asyncio.Event | None = None,
                cert_wait_timeout: float = 300.0, rotator: CertRotator | None = None) -> None:
    """Run until SIGTERM/SIGINT (or `stop`), then stop accepting, finish in-flight reviews and return."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    cert = ServingCertificate(options.webhook_cert_dir, options.tls_min_version, handler.metrics)
    health = Health(cert, handler.source, rotator)
    worker = options.worker_index is not None  # --workers: the supervisor serves health and metrics
    runners = [] if worker else [await start_site(health_app(health), parse_addr(options.health_addr)),
                                 await start_site(metrics_app(handler.metrics), parse_addr(options.metrics_addr))]

    def report() -> None:
        if worker:
            write_worker_state(options, health)

    handler.source.start()
    if rotator is not None:
        rotator.start()
    try:
        deadline = loop.time() + cert_wait_timeout
        while not cert.refresh() and not stop.is_set():
            report()
            if loop.time() > deadline:
                raise RuntimeError(f"certs are not ready after {cert_wait_timeout:.0f}s: {cert.last_error}")
            await asyncio.sleep(0.5)
        if stop.is_set():
            return
        webhook = await start_site(webhook_app(handler, options.max_request_bytes), (options.host, options.port),
                                   ssl_context=cert.context, shutdown_timeout=options.shutdown_timeout,
                                   reuse_port=options.workers > 1)
        runners.insert(0, webhook)
        log.info("serving", extra={"port": options.port, "path": MUTATE_PATH, "tls-min-version":
                                   options.tls_min_version})
        while not stop.is_set():
            report()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=min(options.cert_check_interval, 1.0))
            cert.refresh()
            handler.policy.refresh()
        health.shutting_down = True
        report()
        if options.shutdown_delay > 0:
            # Readiness is now failing; keep serving while endpoints drop this replica, then stop accepting.
            log.info("shutting down: not ready, still serving", extra={"delay": options.shutdown_delay})
            await asyncio.sleep(options.shutdown_delay)
        log.info("shutting down: no new connections, finishing in-flight reviews")
    finally:
        for runner in runners:
            await runner.cleanup()
        handler.source.stop()
        if rotator is not None:
            rotator.stop()
