"""`wi-webhook serve`: the HTTPS admission endpoint, health and metrics listeners, and graceful shutdown.

The request path itself (parse, ServiceAccount, core, answer) is webhook/handler.py.
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
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from webhook.admission import BadReview
from webhook.config import ServeOptions, parse_addr
from webhook.constants import MUTATE_PATH, VALIDATE_SA_PATH
from webhook.handler import AdmissionHandler
from webhook.metrics import Metrics
from webhook.rotation import CertRotator
from webhook.serviceaccounts import ServiceAccountSource
from webhook.tls import ServingCertificate

log = logging.getLogger("webhook")


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def webhook_app(handler: AdmissionHandler, max_request_bytes: int) -> web.Application:
    def endpoint(answer_with: Callable[[bytes], Awaitable[bytes]]) -> Callable[[web.Request], Awaitable[web.Response]]:
        # One coroutine per route that calls the handler itself: a shared coroutine in between costs a frame per
        # review.
        async def answer(request: web.Request) -> web.Response:
            # The API server sends exactly this header; parsing it (request.content_type) costs a few microseconds.
            if request.headers.get("Content-Type") != "application/json" \
                    and request.content_type != "application/json":
                return json_error(415, f"Content-Type must be application/json, got {request.content_type!r}")
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return json_error(413, f"request body larger than the configured limit of {max_request_bytes} "
                                       "bytes (--max-request-bytes)")
            try:
                reply = await answer_with(body)
            except BadReview as exc:
                handler.metrics.admission.of("error", "").tally()
                return json_error(400, str(exc))
            return web.Response(body=reply, content_type="application/json")

        return answer

    app = web.Application(client_max_size=max_request_bytes)
    app.router.add_post(MUTATE_PATH, endpoint(handler.review))
    app.router.add_post(VALIDATE_SA_PATH, endpoint(handler.validate_service_account))
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


def write_worker_state(options: ServeOptions, health: Health, metrics: Metrics) -> None:
    """A worker's readiness and its per-review metrics, for the supervisor's /readyz and /metrics (each file
    replaced atomically: another process reads them). The metrics file is named by pid and outlives the worker,
    so the supervisor's totals never go down when a worker is replaced (see webhook/stats.py)."""
    if options.worker_state_dir is None:
        return
    ok, detail = health.ready()
    state_dir = Path(options.worker_state_dir)
    _replace(state_dir / f"worker-{options.worker_index}.json",
             orjson.dumps({"ready": ok, "detail": detail, "time": time.time(), "pid": os.getpid()}))
    _replace(state_dir / f"admission-{os.getpid()}.json", metrics.admission.to_json())


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
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
            write_worker_state(options, health, handler.metrics)

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
        with contextlib.suppress(OSError):
            report()  # the reviews finished during shutdown count too
        handler.source.stop()
        if rotator is not None:
            rotator.stop()
