"""`serve --reuse-port`: hand the webhook's ports to a successor process on the same host without a gap.

Why: with `hostNetwork` (chart value) the webhook's ports are the node's. A Deployment's surge pod used to be unable
to start beside the pod it replaces (same ports), so an upgrade stopped the only replica first and, with
failurePolicy Fail, pod creations failed meanwhile. With SO_REUSEPORT on every listener, the successor (same user)
binds the same ports while this process still serves; the kernel spreads new connections over both.

What this process does on SIGTERM (serve() calls `hand_off`):
1. /readyz already fails (Health.shutting_down). Close our health and metrics listeners first, so the kubelet's
   probes and Prometheus's scrapes of these ports reach the successor only; answer every review with
   `Connection: close` from now on (ConnectionGuard.closing) and keep accepting on the webhook port.
2. Poll GET http://<health host>:<port>/readyz every 0.25 s. Our own health listener is closed, so a 200 comes from
   ANOTHER process: a successor is serving. (A kubelet probe of the successor's pod may meanwhile have been answered
   by us, since the two share the port: that is why readiness is decided here and not by the pod's Ready alone.)
3. As soon as one answers 200, or after --shutdown-delay at the latest (then with a warning: `helm uninstall` or a
   scale to 0 has no successor, and the pod must still terminate), close the webhook listener, let clients that
   keep using a connection end it after a `Connection: close` answer (GuardedSite.drain, at most DRAIN_LIMIT_S),
   then the usual shutdown: idle connections closed, in-flight reviews finished within --shutdown-timeout.

Closing a listening socket resets the connections the kernel had queued on it (handshake done, not accepted yet),
unless net.ipv4.tcp_migrate_req=1 (Linux >= 5.14; per network namespace: the node's, with hostNetwork), which moves
them to another listener of the same SO_REUSEPORT group. The chart README asks hostNetwork users to set it; the
real-node tests set it (tests/node/realnode.py).

Does the API server retry an admission call whose connection was reset? No (kube-apiserver v1.37.2, read in the
module cache): the mutating dispatcher (k8s.io/apiserver pkg/admission/plugin/webhook/mutating/dispatcher.go,
`do := func() { err = r.Do(ctx).Into(response) }`) calls client-go's rest.Request once; rest.Request.request
(client-go rest/request.go, isErrRetryableFunc) retries a connection reset or EOF only when the method is GET, and
the admission call is a POST. Go's http.Transport (net/http transport.go, shouldRetryRequest) retries a POST on a
reused connection only if nothing of it was written yet. So a reset after the review was sent fails the pod
creation (failurePolicy Fail): the hand-off must not reset connections, hence `Connection: close` and the drain.
(client-go does retry, up to 10 times, a 429/5xx answer that carries Retry-After, as the body is a byte slice; we do
not depend on it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from webhook.serving.connection_guard import ConnectionGuard, GuardedSite

log = logging.getLogger("handoff")  # shown at the default log level (webhook/cli/logs.py)

POLL_INTERVAL_S = 0.25
PROBE_TIMEOUT_S = 1.0  # one /readyz request; a successor that takes longer is not ready for reviews either
DRAIN_LIMIT_S = 2.0  # the longest wait for clients to end their connections after the listener closed
DRAIN_QUIET_S = 0.5  # a connection without a request for this long is idle: the client is not about to use it


def probe_host(health_host: str) -> str:
    """Where to ask for /readyz: the health listener's own address, or loopback for an any-address listener."""
    if health_host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if health_host == "::":
        return "::1"
    return health_host


async def answers_ready(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One GET /readyz (HTTP/1.0, plain): True on a 200. Refused, reset, slow or another status: False."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        writer.write(f"GET /readyz HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
        status_line = await asyncio.wait_for(reader.readline(), timeout)
        parts = status_line.split()
        return len(parts) >= 2 and parts[1] == b"200"
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), timeout)


async def wait_for_successor(host: str, port: int, limit: float) -> float | None:
    """Poll /readyz every POLL_INTERVAL_S for at most `limit` seconds; the seconds it took, or None."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + limit
    while True:
        remaining = deadline - loop.time()
        if await answers_ready(host, port, timeout=max(0.05, min(PROBE_TIMEOUT_S, remaining))):
            return loop.time() - started
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        await asyncio.sleep(min(POLL_INTERVAL_S, remaining))


async def hand_off(webhook: web.AppRunner, guard: ConnectionGuard, side_runners: list[web.AppRunner],
                   health_addr: tuple[str, int], limit: float) -> bool:
    """Steps 1-3 of the module docstring, up to the drain; the caller's shutdown then closes the webhook runner.
    Returns whether a successor answered ready."""
    guard.closing = True
    for runner in side_runners:  # health and metrics: probes and scrapes go to the successor from now on
        await runner.cleanup()
    host, port = probe_host(health_addr[0]), health_addr[1]
    log.info("shutting down: handing off, waiting for a successor's /readyz",
             extra={"readyz": f"{host}:{port}", "limit": limit})
    took = await wait_for_successor(host, port, limit)
    if took is None:
        log.warning("shutting down: no successor answered /readyz within --shutdown-delay; stopping anyway",
                    extra={"readyz": f"{host}:{port}", "limit": limit})
    else:
        log.info("shutting down: handed off to a ready successor, closing the webhook port",
                 extra={"waited": round(took, 2)})
    for site in list(webhook.sites):
        if isinstance(site, GuardedSite):
            site.stop_accepting()
            await site.drain(DRAIN_QUIET_S, DRAIN_LIMIT_S)
    return took is not None
