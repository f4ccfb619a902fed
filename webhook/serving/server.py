"""`wi-webhook serve`: the HTTPS admission endpoint, health and metrics listeners, and graceful shutdown.

The request path itself (parse, ServiceAccount, core, answer) is webhook/serving/handler.py.
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
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from webhook.certificates.rotation import CertRotator
from webhook.cli.config import ServeOptions, parse_addr
from webhook.core.constants import MUTATE_PATH, VALIDATE_SA_PATH
from webhook.serving.admission import BadReview
from webhook.serving.connection_guard import ConnectionGuard, GuardedSite
from webhook.serving.handler import AdmissionHandler
from webhook.serving.handoff import hand_off
from webhook.serving.limits import BodyBudget, Limits, release_memory
from webhook.serving.metrics import Metrics
from webhook.serving.startup_probe import StartupProbe
from webhook.serving.tls import ServingCertificate
from webhook.sources.manifests import ObjectShapeError
from webhook.sources.serviceaccounts import ServiceAccountSource

log = logging.getLogger("webhook")


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def webhook_app(handler: AdmissionHandler, max_request_bytes: int, guard: ConnectionGuard | None = None,
                bounds: Limits | None = None) -> web.Application:
    bounds = bounds or Limits()
    budget = BodyBudget(bounds.max_inflight_body_bytes)
    body_timeout = bounds.body_timeout
    guard = guard or ConnectionGuard(bounds)  # without a GuardedSite it tracks nothing

    def endpoint(answer_with: Callable[[bytes], Awaitable[bytes]]) -> Callable[[web.Request], Awaitable[web.Response]]:
        # The connection guard is told here, not by an aiohttp middleware (each middleware costs a coroutine per
        # review, and aiohttp adds one more for any app that has middlewares).
        async def answer(request: web.Request) -> web.Response:
            connection = guard.request_started(request.transport)
            try:
                response = await respond(request, answer_with)
            finally:
                guard.request_finished(connection)
            if guard.closing:
                response.force_close()  # handing off (serve --reuse-port): the client reconnects, to the successor
            return response

        return answer

    async def respond(request: web.Request, answer_with: Callable[[bytes], Awaitable[bytes]]) -> web.Response:
        # The API server sends exactly this header; parsing it (request.content_type) costs a few microseconds.
        if request.headers.get("Content-Type") != "application/json" \
                and request.content_type != "application/json":
            return json_error(415, f"Content-Type must be application/json, got {request.content_type!r}")
        refused = encoding_refusal(request)
        if refused is not None:
            return refused
        size = budget.charge(request.content_length, max_request_bytes)
        if not budget.try_acquire(size) and not await budget.acquire(size, body_timeout):
            return closing(json_error(503, "too many large reviews in flight; retry"))
        try:
            try:
                # The usual review arrived whole with its headers: no deadline task needed to read it.
                body = await (request.read() if request.content.is_eof() else
                              asyncio.wait_for(request.read(), body_timeout))
            except web.HTTPRequestEntityTooLarge:
                return closing(json_error(413, f"request body larger than the configured limit of "
                                               f"{max_request_bytes} bytes (--max-request-bytes)"))
            except TimeoutError:
                return closing(json_error(408, f"request body not received within {body_timeout:g}s"))
            try:
                reply = await answer_with(body)
            except BadReview as exc:
                handler.metrics.admission.of("error", "").tally()
                return json_error(400, str(exc))
            except ObjectShapeError as exc:
                handler.metrics.admission.of("error", "").tally()
                return json_error(400, f"AdmissionReview.request.object: {exc}")
            return web.Response(body=reply, content_type="application/json")
        finally:
            budget.release(size)

    app = web.Application(client_max_size=max_request_bytes)
    app.router.add_post(MUTATE_PATH, endpoint(handler.review))
    app.router.add_post(VALIDATE_SA_PATH, endpoint(handler.validate_service_account))
    return app


def encoding_refusal(request: web.Request) -> web.Response | None:
    """415 for a compressed body, before it is read: the API server never compresses admission requests, and a
    0.5 MB gzip body inflating to 512 MiB cost 150 MB of memory on the way to its 413. (The webhook's runner
    also has aiohttp's decompression off, so nothing is inflated even before this check runs.)"""
    headers = request.headers
    if "Content-Encoding" not in headers and "Transfer-Encoding" not in headers:
        return None  # what the API server sends
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        return closing(json_error(415, f"Content-Encoding {encoding!r} is not supported; send the body "
                                       "uncompressed (identity)"))
    transfer = [part.strip().lower() for part in request.headers.getall("Transfer-Encoding", [])
                for part in part.split(",")]
    if any(part != "chunked" for part in transfer):
        return closing(json_error(415, f"Transfer-Encoding {', '.join(transfer)!r} is not supported; only "
                                       "chunked"))
    return None


def closing(response: web.Response) -> web.Response:
    """A refusal that also ends the connection: the unread body must not be parsed as the next request."""
    response.force_close()
    return response


@dataclass
class Health:
    """Readiness: certificates loaded AND ServiceAccounts synced, and not shutting down."""

    cert: ServingCertificate
    source: ServiceAccountSource
    rotator: CertRotator | None = None
    shutting_down: bool = False
    startup: StartupProbe[Any] | None = None
    listening: bool = True  # False until the webhook port is open (serve sets it)

    def ready(self) -> tuple[bool, str]:
        if self.shutting_down:
            return False, "shutting down"
        if self.startup is not None and not self.startup.done:
            return self.startup.status()
        if self.rotator is not None and not self.rotator.done_once.is_set():
            return False, f"certs are not ready yet: rotator has not finished ({self.rotator.last_error or 'running'})"
        if not self.cert.loaded:
            return False, f"certs are not ready yet: {self.cert.last_error or 'waiting for tls.crt/tls.key'}"
        if not self.listening:
            return False, "the webhook port is not open yet"
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
    so the supervisor's totals never go down when a worker is replaced (see webhook/serving/stats.py)."""
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


async def start_webhook_site(app: web.Application, addr: tuple[str, int], guard: ConnectionGuard, bounds: Limits, *,
                             ssl_context: ssl.SSLContext, shutdown_timeout: float, reuse_port: bool) -> web.AppRunner:
    """The webhook port: bounded connections (serving/connection_guard.py), aiohttp's keep-alive timeout at ours, and
    no decompression of request bodies (see encoding_refusal)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout,
                           keepalive_timeout=bounds.idle_timeout + 2, auto_decompress=False)  # ours comes first
    await runner.setup()
    site = GuardedSite(runner, addr[0] or None, addr[1], guard, ssl_context=ssl_context, reuse_address=True,
                       shutdown_timeout=shutdown_timeout, reuse_port=reuse_port or None,
                       handshake_timeout=bounds.handshake_timeout)
    await site.start()
    return runner


def native_sidecar_startup(handler: AdmissionHandler, detect: Callable[[], bool]) -> StartupProbe[bool]:
    """--native-sidecar=auto: ask the API server its version (retried), then serve with the answer."""
    def apply(native: bool) -> None:
        handler.config = handler.config.model_copy(update={"native_sidecar": native})
        log.info("native sidecar detection", extra={"native-sidecar": native})

    return StartupProbe("the API server version (--native-sidecar=auto)", detect, apply)


async def serve(options: ServeOptions, handler: AdmissionHandler, *, stop: asyncio.Event | None = None,
                cert_wait_timeout: float = 300.0, rotator: CertRotator | None = None,
                native_sidecar_probe: Callable[[], bool] | None = None) -> None:
    """Run until SIGTERM/SIGINT (or `stop`), then stop accepting, finish in-flight reviews and return. With
    --reuse-port, first hand the ports to a successor process (webhook/serving/handoff.py).

    /healthz and /metrics answer at once; the webhook port opens when the certificates are loaded and the start-up
    calls (native_sidecar_probe) have succeeded, which /readyz reports until then."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        bounds = Limits.for_loop(os.environ, loop)
    except ValueError as exc:
        log.error(str(exc))
        raise SystemExit(2) from None
    handler.metrics.admission.max_namespaces = bounds.max_metric_namespaces
    release_memory()  # what reading --objects files left behind
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    cert = ServingCertificate(options.webhook_cert_dir, options.tls_min_version, handler.metrics)
    startup = native_sidecar_startup(handler, native_sidecar_probe) if native_sidecar_probe is not None else None
    health = Health(cert, handler.source, rotator, startup=startup, listening=False)
    worker = options.worker_index is not None  # --workers: the supervisor serves health and metrics
    reuse = options.reuse_port  # all three ports shared with a successor (webhook/serving/handoff.py)
    runners = [] if worker else [
        await start_site(health_app(health), parse_addr(options.health_addr), reuse_port=reuse),
        await start_site(metrics_app(handler.metrics), parse_addr(options.metrics_addr), reuse_port=reuse)]

    def report() -> None:
        if worker:
            write_worker_state(options, health, handler.metrics)

    handler.source.start()
    if rotator is not None:
        rotator.start()
    probing = asyncio.create_task(startup.run(stop)) if startup is not None else None
    try:
        deadline = loop.time() + cert_wait_timeout
        while not stop.is_set():
            cert.refresh()
            if cert.loaded and (startup is None or startup.done):
                break
            report()
            if not cert.loaded and loop.time() > deadline:
                raise RuntimeError(f"certs are not ready after {cert_wait_timeout:.0f}s: {cert.last_error}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
        if stop.is_set():
            return
        guard = ConnectionGuard(bounds)
        webhook = await start_webhook_site(webhook_app(handler, options.max_request_bytes, guard, bounds),
                                           (options.host, options.port), guard, bounds, ssl_context=cert.context,
                                           shutdown_timeout=options.shutdown_timeout,
                                           reuse_port=options.workers > 1 or reuse)
        runners.insert(0, webhook)
        health.listening = True
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
        if reuse:
            side, runners[1:] = runners[1:], []
            await hand_off(webhook, guard, side, parse_addr(options.health_addr), options.shutdown_delay)
        elif options.shutdown_delay > 0:
            # Readiness is now failing; keep serving while endpoints drop this replica, then stop accepting.
            log.info("shutting down: not ready, still serving", extra={"delay": options.shutdown_delay})
            await asyncio.sleep(options.shutdown_delay)
        log.info("shutting down: no new connections, finishing in-flight reviews")
    finally:
        if probing is not None:
            probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probing
        for runner in runners:
            await runner.cleanup()
        with contextlib.suppress(OSError):
            report()  # the reviews finished during shutdown count too
        handler.source.stop()
        if rotator is not None:
            rotator.stop()
