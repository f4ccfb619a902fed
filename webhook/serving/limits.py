"""The bounds' values and their environment overrides, the request-body budget, and the release of freed memory:
what keeps `serve` inside its memory limit whatever a caller of the webhook port sends. The listener that enforces
the per-connection bounds is serving/connection_guard.py.

Anything in the cluster that can reach port 9443 can call it without authentication, and the pod has a hard memory
limit (the chart's default is in charts/workload-identity-webhook/README.md, "Memory"); an OOM-killed webhook with
`failurePolicy: Fail` blocks every labelled pod. So every resource a caller can make us hold is capped here:
connections (count, idle time, time to send headers and body), bytes of request bodies being worked on at once, and
the allocator's habit of keeping freed memory. The figures are fixed rather than flags: each is far from what the
API server needs (it sends a review at once, a few KB to 3 MiB, and waits at most 30 s) and close enough to what
the chart's memory limit was measured with (hack/memory_figures.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

log = logging.getLogger("webhook")

# Connections to the webhook port held open at once (established TLS); one more is closed at once. The API server
# opens one per concurrent review; 1,000 idle ones cost about 30 MB (chart README "Memory").
MAX_CONNECTIONS = 1000
# The same on the plain asyncio event loop (`--event-loop asyncio`), whose TLS transport fills a 256 KiB read buffer
# per connection (uvloop's costs about 20 KB): 250 of them hold about 70 MB.
ASYNCIO_MAX_CONNECTIONS = 250
# A TLS handshake must finish within this many seconds (asyncio's default is 60).
HANDSHAKE_TIMEOUT = 5.0
# From its first byte, a request's headers must arrive within this many seconds, and then its body within
# BODY_TIMEOUT: both well under the API server's webhook timeout (10 s by default, the chart sets 5 s), so a
# genuine review is never cut and a slow client cannot hold a connection.
HEADER_TIMEOUT = 5.0
BODY_TIMEOUT = 5.0
# A connection with no request in progress is closed after this many seconds (aiohttp's default is 3,630). The
# API server's client keeps idle connections 90 s and reconnects when we close first.
IDLE_TIMEOUT = 30.0
# Bytes of request bodies read and being answered at once; a review beyond it waits (up to BODY_TIMEOUT) for
# others to finish, then gets 503. A body is charged its Content-Length (or --max-request-bytes when chunked), at
# most this whole budget, so one review of any allowed size can always run alone. Four 3 MiB pods at once.
MAX_INFLIGHT_BODY_BYTES = 12 * 1024 * 1024
# Distinct request namespaces given their own metric series; later ones share the series namespace="_other".
MAX_METRIC_NAMESPACES = 250
OTHER_NAMESPACE = "_other"


@dataclass(frozen=True)
class Limits:
    """The figures above, each overridable by an environment variable (WI_WEBHOOK_<NAME>) for the rare cluster
    that needs another bound and for tests that cannot wait 30 s; not flags, because nobody should need them."""

    max_connections: int = MAX_CONNECTIONS
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    header_timeout: float = HEADER_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    max_inflight_body_bytes: int = MAX_INFLIGHT_BODY_BYTES
    max_metric_namespaces: int = MAX_METRIC_NAMESPACES

    @classmethod
    def for_loop(cls, environ: Mapping[str, str], loop: asyncio.AbstractEventLoop) -> Limits:
        """`from_env`, with the lower connection cap on an event loop other than uvloop's unless one is set."""
        bounds = cls.from_env(environ)
        if not type(loop).__module__.startswith("uvloop") and not environ.get("WI_WEBHOOK_MAX_CONNECTIONS", "").strip():
            bounds = replace(bounds, max_connections=ASYNCIO_MAX_CONNECTIONS)
        return bounds

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Limits:
        """ValueError naming the variable when one is set to something other than a positive number."""
        values: dict[str, Any] = {}
        for item in fields(cls):
            variable = f"WI_WEBHOOK_{item.name.upper()}"
            text = environ.get(variable, "").strip()
            if not text:
                continue
            kind = int if item.type == "int" else float
            try:
                value = kind(text)
            except ValueError:
                value = 0
            if not value > 0:
                raise ValueError(f"{variable}={text!r} is not a positive {'whole ' if kind is int else ''}number; "
                                 f"unset it to use the default ({getattr(cls, item.name)})")
            values[item.name] = value
        return cls(**values)


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018 - glibc only (musl has no mallopt/malloc_trim)
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def release_memory() -> None:
    """Return the free parts of the heap to the system (glibc's malloc_trim); after a flood has drained.

    Why: each TLS connection's read buffer is large (256 KiB on asyncio's loop); once such blocks are freed glibc
    keeps them in the heap, and RSS grew 63 -> 202 MB over 30 rounds of 2,000 connections and never came back.
    (Tuning glibc's mmap and trim thresholds instead was tried: it cost large pods half their throughput, since a
    200 KB review's buffers were then mapped and unmapped on every request.)"""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class BodyBudget:
    """A semaphore on the bytes of request bodies in flight (see MAX_INFLIGHT_BODY_BYTES); event loop only."""

    def __init__(self, limit: int = MAX_INFLIGHT_BODY_BYTES) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def charge(self, declared: int | None, max_request_bytes: int) -> int:
        """What a body is charged: its declared length, else the largest allowed; never more than the budget."""
        size = declared if declared is not None and declared >= 0 else max_request_bytes
        return min(size, self.limit)

    async def acquire(self, size: int, timeout: float) -> bool:
        """Take `size` bytes of the budget, waiting up to `timeout` seconds; False when it did not free up."""
        if self.used + size <= self.limit and not self._waiters:
            self.used += size
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, waiter)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            if entry in self._waiters:
                self._waiters.remove(entry)
            if waiter.done() and not waiter.cancelled():  # granted just as the wait timed out
                self.release(size)
            self._wake()
            return False
        except asyncio.CancelledError:
            if entry in self._waiters:
                self._waiters.remove(entry)
            elif waiter.done() and not waiter.cancelled():
                self.release(size)
            self._wake()
            raise
        return True

    def release(self, size: int) -> None:
        self.used -= size
        self._wake()

    def _wake(self) -> None:
        """Grant waiters in order while they fit (first come, first served: a large body is not starved)."""
        while self._waiters and self.used + self._waiters[0][0] <= self.limit:
            size, waiter = self._waiters.pop(0)
            if waiter.done():
                continue
            self.used += size
            waiter.set_result(None)


def log_refusal(what: str, **extra: object) -> None:
    """One debug line per refused connection or request (a flood must not flood the logs at info)."""
    with contextlib.suppress(Exception):
        log.debug(what, extra=extra)
