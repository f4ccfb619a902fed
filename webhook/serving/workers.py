"""`serve --workers N`: N worker processes share the webhook port (SO_REUSEPORT); this supervisor serves
/healthz, /readyz and /metrics, restarts a worker that dies, and forwards SIGTERM.

Decision: each worker keeps its own ServiceAccount cache (and watch). Nothing is shared on the hot path, a worker
crash cannot corrupt another's state, and the cost is N watches per pod and N copies of the cache (about
0.4 KB per ServiceAccount each). Metrics aggregate through prometheus-client's multiprocess mode (a directory of
memory-mapped files in a temporary directory, so /tmp must be writable: the chart mounts an in-memory emptyDir),
except the per-review ones, which each worker writes to a file of its own about once a second
(webhook/serving/metrics.py: AdmissionStats) and the supervisor adds up when scraped.
Only worker 0 runs the self-managed certificate rotator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from aiohttp import web

from webhook.cli.config import ServeOptions, parse_addr
from webhook.serving.metrics import AdmissionCollector, AdmissionStats

log = logging.getLogger("workers")


def _worker_argv(argv: list[str], index: int, state_dir: Path) -> list[str]:
    return [sys.executable, "-m", "webhook.cli", *argv, "--worker-index", str(index), "--worker-state-dir",
            str(state_dir)]


class Supervisor:
    def __init__(self, options: ServeOptions, argv: list[str], state_dir: Path) -> None:
        self.options, self.argv, self.state_dir = options, argv, state_dir
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.restarts = 0
        self.stopping = False

    def spawn(self, index: int) -> None:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.state_dir / "metrics")}
        self.procs[index] = subprocess.Popen(_worker_argv(self.argv, index, self.state_dir), env=env)

    def ready(self) -> tuple[bool, str]:
        if self.stopping:
            return False, "shutting down"
        details = []
        ok = True
        for index, proc in sorted(self.procs.items()):
            state_file = self.state_dir / f"worker-{index}.json"
            try:
                state = orjson.loads(state_file.read_bytes())
            except (OSError, ValueError):
                state = {"ready": False, "detail": "starting", "time": 0, "pid": proc.pid}
            fresh = time.time() - float(state["time"]) < 10 and state.get("pid") == proc.pid
            alive = proc.poll() is None
            worker_ok = alive and fresh and bool(state["ready"])
            ok = ok and worker_ok
            details.append(f"worker {index}: {'ok' if worker_ok else 'not ready'} ({state['detail']})")
        return ok, "; ".join(details)

    async def watch(self, stop: asyncio.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            for index, proc in list(self.procs.items()):
                if proc.poll() is not None and not self.stopping:
                    log.error("worker exited; restarting", extra={"worker": index, "code": proc.returncode})
                    with contextlib.suppress(OSError):
                        from prometheus_client import multiprocess

                        multiprocess.mark_process_dead(proc.pid, str(self.state_dir / "metrics"))  # type: ignore[no-untyped-call]
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10)
                    self.restarts += 1
                    self.spawn(index)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)

    def terminate(self) -> None:
        self.stopping = True
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.options.shutdown_delay + self.options.shutdown_timeout + 5
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def worker_admission_stats(state_dir: Path) -> AdmissionStats:
    """The per-review metrics of every worker this supervisor started, the exited ones included."""
    stats = AdmissionStats()
    for path in sorted(state_dir.glob("admission-*.json")):
        try:
            stats.add(path.read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("skipping a worker's metrics file", extra={"file": str(path), "error": str(exc)})
    return stats


async def supervise(options: ServeOptions, argv: list[str]) -> int:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

    with tempfile.TemporaryDirectory(prefix="wi-webhook-workers-") as tmp:
        state_dir = Path(tmp)
        (state_dir / "metrics").mkdir()
        supervisor = Supervisor(options, argv, state_dir)
        for index in range(options.workers):
            supervisor.spawn(index)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        async def metrics(_: web.Request) -> web.Response:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=str(state_dir / "metrics"))  # type: ignore[no-untyped-call]
            registry.register(AdmissionCollector(lambda: worker_admission_stats(state_dir)))
            response = web.Response(body=generate_latest(registry))
            response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
            return response

        from webhook.serving.health import health_app
        from webhook.serving.server import start_site

        scrape = web.Application()
        scrape.router.add_get("/metrics", metrics)
        runners = [await start_site(health_app(supervisor.ready), parse_addr(options.health_addr)),
                   await start_site(scrape, parse_addr(options.metrics_addr))]
        try:
            await supervisor.watch(stop)
        finally:
            await loop.run_in_executor(None, supervisor.terminate)
            for runner in runners:
                await runner.cleanup()
    return 0
