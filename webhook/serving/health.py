"""`serve`'s readiness (/readyz) and liveness (/healthz), and, under `--workers`, the state file each worker writes
for the supervisor (which serves those two paths for all of them: webhook/serving/workers.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from webhook.certificates.rotation import CertRotator
from webhook.cli.config import ServeOptions
from webhook.serving.metrics import Metrics
from webhook.serving.startup import StartupProbe
from webhook.serving.tls import ServingCertificate
from webhook.sources.serviceaccounts import ServiceAccountSource


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


def health_app(ready: Callable[[], tuple[bool, str]]) -> web.Application:
    """/healthz (the process answers) and /readyz (`ready()`: 200 or 503, with its detail)."""
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        ok, detail = ready()
        return web.Response(text=("ok: " if ok else "not ready: ") + detail, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def write_worker_state(options: ServeOptions, health: Health, metrics: Metrics) -> None:
    """A worker's readiness and its per-review metrics, for the supervisor's /readyz and /metrics (each file
    replaced atomically: another process reads them). The metrics file is named by pid and outlives the worker,
    so the supervisor's totals never go down when a worker is replaced (see webhook/serving/metrics.py)."""
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
