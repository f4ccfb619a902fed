"""`wi-webhook serve`: the HTTPS admission endpoint, health and metrics listeners, and graceful shutdown.

The request path itself (parse, ServiceAccount, core, answer) is webhook/serving/handler.py; readiness is
webhook/serving/health.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from webhook.certificates.rotation import CertRotator
from webhook.cli.config import ServeOptions, parse_addr
from webhook.core.constants import MUTATE_PATH, VALIDATE_SA_PATH
from webhook.serving.admission import BadReview, internal_error_review, uid_of
from webhook.serving.connection_guard import ConnectionGuard, GuardedSite
from webhook.serving.handler import AdmissionHandler
from webhook.serving.handoff import hand_off
from webhook.serving.health import Health, health_app, write_worker_state
from webhook.serving.limits import BodyBudget, Limits, release_memory
from webhook.serving.metrics import Metrics
from webhook.serving.startup import StartupProbe
from webhook.serving.tls import ServingCertificate

log = logging.getLogger("webhook")


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def guard_middleware(guard: ConnectionGuard) -> Middleware:
    """Tells the connection guard when its connection has a request being answered (exempt from the header and idle
    deadlines until the answer is ready), and ends every connection after its answer while handing off."""

    @web.middleware
    async def guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        connection = guard.request_started(request.transport)
        try:
            response = await handler(request)
        finally:
            guard.request_finished(connection)
        if guard.closing:
            response.force_close()  # handing off (serve --reuse-port): the client reconnects, to the successor
        return response

    return guarded


def webhook_app(handler: AdmissionHandler, max_request_bytes: int, guard: ConnectionGuard | None = None,
                bounds: Limits | None = None) -> web.Application:
    bounds = bounds or Limits()
    budget = BodyBudget(bounds.max_inflight_body_bytes)
    body_timeout = bounds.body_timeout
    guard = guard or ConnectionGuard(bounds)  # without a GuardedSite it tracks nothing

    async def mutate(request: web.Request) -> web.Response:
        return await answer(request, handler.review)

    async def validate_service_account(request: web.Request) -> web.Response:
        return await answer(request, handler.validate_service_account)

    async def answer(request: web.Request, review: Callable[[bytes], Awaitable[bytes]]) -> web.Response:
        """Refuse what is not an AdmissionReview we can take (415, 503, 413, 408), else read it and answer it."""
        if request.content_type != "application/json":
            return json_error(415, f"Content-Type must be application/json, got {request.content_type!r}")
        refused = encoding_refusal(request)
        if refused is not None:
            return refused
        size = budget.charge(request.content_length, max_request_bytes)
        if not await budget.acquire(size, body_timeout):
            return closing(json_error(503, "too many large reviews in flight; retry"))
        try:
            try:
                body = await asyncio.wait_for(request.read(), body_timeout)
            except web.HTTPRequestEntityTooLarge:
                return closing(json_error(413, f"request body larger than the configured limit of "
                                               f"{max_request_bytes} bytes (--max-request-bytes)"))
            except TimeoutError:
                return closing(json_error(408, f"request body not received within {body_timeout:g}s"))
            try:
                reply = await review(body)
            except BadReview as exc:
                handler.metrics.admission.of("error", "").tally()
                return json_error(400, str(exc))
            except Exception:
                # A bug of ours: still an AdmissionReview with the uid (the API server shows its message), and the
                # traceback in our log, rather than aiohttp's bare text 500.
                log.exception("internal error answering a review", extra={"uid": uid_of(body),
                                                                          "path": request.path})
                handler.metrics.admission.of("error", "").tally()
                reply = internal_error_review(body)
            return web.Response(body=reply, content_type="application/json")
        finally:
            budget.release(size)

    app = web.Application(client_max_size=max_request_bytes, middlewares=[guard_middleware(guard)])
    app.router.add_post(MUTATE_PATH, mutate)
    app.router.add_post(VALIDATE_SA_PATH, validate_service_account)
    return app


def encoding_refusal(request: web.Request) -> web.Response | None:
    """415 for a compressed body, before it is read: the API server never compresses admission requests, and a
    0.5 MB gzip body inflating to 512 MiB cost 150 MB of memory on the way to its 413. (The webhook's runner
    also has aiohttp's decompression off, so nothing is inflated even before this check runs.)"""
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
        await start_site(health_app(health.ready), parse_addr(options.health_addr), reuse_port=reuse),
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
