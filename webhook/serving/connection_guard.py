"""The webhook port's listener, which enforces the per-connection bounds (their values are in serving/limits.py):
a cap on how many connections, a TLS handshake timeout, a deadline for a request's headers, and an idle timeout
between requests.

aiohttp alone keeps a connection that sends nothing for an hour (its keep-alive timeout) and one that sends its
headers a byte at a time for as long as it keeps sending; each costs memory (2,000 idle TLS connections held
147 MB). Each connection's protocol is wrapped by `_Tracked`, which forwards everything to aiohttp's own handler
and notes when a request's first byte arrived; the webhook app's middleware (server.guard_middleware) tells the
guard when aiohttp handed it a request (its headers are complete) and when the answer was ready. A sweep once a
second closes what overstayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ssl
import time
import weakref
from typing import Any

from aiohttp import web

from webhook.serving import limits


class ConnectionGuard:
    """The open connections of one listener and their timers (event loop only)."""

    def __init__(self, bounds: limits.Limits | None = None) -> None:
        bounds = bounds or limits.Limits()
        self.max_connections = bounds.max_connections
        self.header_timeout = bounds.header_timeout
        self.idle_timeout = bounds.idle_timeout
        self.open: dict[Any, _Tracked] = {}  # transport -> its tracker
        self.refused = 0
        self.timed_out = 0
        self._peak = 0
        # Set while this process hands its port to a successor (webhook/serving/handoff.py): every answer then carries
        # `Connection: close`, so a client's pooled keep-alive connection ends cleanly after a response, never by a
        # close between two of its requests (which the API server does not retry for a POST).
        self.closing = False
        # Accepted connections whose TLS handshake is not done: aiohttp does not know them yet (its protocol's
        # connection_made comes after the handshake), and a hand-off must not close the process under them.
        self.handshaking: weakref.WeakSet[_Tracked] = weakref.WeakSet()
        self.handshake_timeout = bounds.handshake_timeout
        self.last_accept = -float("inf")

    def quiet_for(self, now: float) -> float:
        """Seconds since a connection was last accepted or had a request in progress (inf when none is open and
        none was ever accepted); 0 while a TLS handshake, a request or an answer is under way."""
        quiet = now - self.last_accept
        if any(now - tracked.created < self.handshake_timeout for tracked in self.handshaking):
            return 0.0
        for tracked in self.open.values():
            if tracked.busy or tracked.receiving_since is not None:
                return 0.0
            quiet = min(quiet, now - tracked.idle_since)
        return quiet

    def sweep(self, now: float) -> None:
        """Close connections whose headers are overdue or that sat idle too long; trim the heap after a flood."""
        for tracked in list(self.open.values()):
            if tracked.busy:
                continue
            if tracked.receiving_since is not None:
                if now - tracked.receiving_since > self.header_timeout:
                    self.timed_out += 1
                    limits.log_refusal("closing a connection: request headers not received in time",
                                       timeout=self.header_timeout)
                    tracked.transport.abort()  # a slow sender: no graceful TLS close_notify exchange
            elif now - tracked.idle_since > self.idle_timeout:
                # abort, not close: a TLS close waits (up to 30 s) for the peer's close_notify, holding the
                # connection's buffers (256 KiB each on the asyncio loop) meanwhile. An idle client just reconnects.
                tracked.transport.abort()
        if self._peak > 64 and len(self.open) < self._peak // 4:
            # A flood has drained: collect its transports (asyncio's hold reference cycles, which an idle process
            # would otherwise keep until the collector happens to run) and give their buffers back.
            gc.collect()
            limits.release_memory()
            self._peak = len(self.open)

    def request_started(self, transport: Any) -> _Tracked | None:
        """aiohttp handed a request to the app (its headers are complete): its connection is busy, past the header
        deadline, until `request_finished`. None for a connection this guard does not track."""
        tracked = self.open.get(transport)
        if tracked is not None:
            tracked.busy = True
            tracked.receiving_since = None
        return tracked

    @staticmethod
    def request_finished(tracked: _Tracked | None) -> None:
        """The answer went out: the connection is idle from now (the idle timeout runs)."""
        if tracked is not None:
            tracked.busy = False
            tracked.idle_since = time.monotonic()

    def _added(self, tracked: _Tracked) -> bool:
        if len(self.open) >= self.max_connections:
            self.refused += 1
            limits.log_refusal("refusing a connection: too many open", limit=self.max_connections)
            return False
        self.open[tracked.transport] = tracked
        self._peak = max(self._peak, len(self.open))
        return True


class _Tracked(asyncio.Protocol):
    """Forwards to aiohttp's protocol for one connection, noting when a request started and when it is idle."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard, self.inner = guard, inner
        self.transport: Any = None
        self.busy = False
        self.receiving_since: float | None = None
        self.created = self.idle_since = guard.last_accept = time.monotonic()  # made when the socket is accepted
        guard.handshaking.add(self)
        self.accepted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.guard.handshaking.discard(self)
        self.transport = transport
        self.idle_since = time.monotonic()
        if not self.guard._added(self):
            self.transport.abort()
            return
        self.accepted = True
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.accepted:
            return
        if not self.busy and self.receiving_since is None:
            self.receiving_since = time.monotonic()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.accepted else None

    def pause_writing(self) -> None:
        if self.accepted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.accepted:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.accepted:
            return
        self.guard.open.pop(self.transport, None)
        self.inner.connection_lost(exc)


class GuardedSite(web.TCPSite):
    """A TCPSite whose connections go through a ConnectionGuard, with a bounded TLS handshake."""

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int, guard: ConnectionGuard, *,
                 ssl_context: ssl.SSLContext | None, handshake_timeout: float = limits.HANDSHAKE_TIMEOUT,
                 **kwargs: Any) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, **kwargs)
        self.guard = guard
        self._handshake_timeout = handshake_timeout
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        extra: dict[str, Any] = {"ssl_handshake_timeout": self._handshake_timeout} if self._ssl_context else {}
        self._server = await loop.create_server(
            lambda: _Tracked(self.guard, server()), self._host, self._port, ssl=self._ssl_context,
            backlog=self._backlog, reuse_address=self._reuse_address, reuse_port=self._reuse_port, **extra)
        self._sweeper = asyncio.create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.guard.sweep(time.monotonic())

    def stop_accepting(self) -> None:
        """Close the listening socket only: open connections keep being served (and swept) until stop().

        With SO_REUSEPORT and net.ipv4.tcp_migrate_req=1 the kernel moves connections still queued on this socket
        (handshake done, not yet accepted) to another listener of the port instead of resetting them."""
        if self._server is not None:
            self._server.close()

    async def drain(self, quiet: float, limit: float) -> None:
        """After stop_accepting(): wait (at most `limit` s) until no connection is open or none has had a request
        for `quiet` s. A client that keeps using a connection gets `Connection: close` answers (guard.closing) and
        ends it itself; what is left is idle and is closed by stop()."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while (self.guard.open or self.guard.handshaking) and loop.time() < deadline \
                and self.guard.quiet_for(time.monotonic()) < quiet:
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await super().stop()
