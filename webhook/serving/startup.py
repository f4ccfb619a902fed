"""What `serve` does while it starts, before it answers reviews.

- `bind_error`: the listen addresses are checked first, so a taken port is reported with its flag.
- `StartupProbe`: calls to the API server that serving needs (today: the server version, for
  `--native-sidecar=auto`) are retried (0.5 s doubling up to 30 s, each failure logged) while /healthz already
  answers and /readyz says what is missing. Why not call them before starting: with the API server down the
  process died with a traceback (and was restarted in a loop by the kubelet), and with it hung the call never
  returned, so /healthz never answered and the kubelet killed the pod. A hung call is cut by its own request
  timeout (5 s) and by the probe's (6 s: the client may retry inside one call).
- `watch`: the server waits quietly for its certificates and ServiceAccount cache; an operator looking at
  `kubectl logs` needs to see why the webhook port is not open, so this watcher logs each reason when it changes
  (`not_ready_reasons`, a pure function), then one "serving on ..." line once the port accepts connections. These
  lines go to the `startup` logger, which logs at every level except `--log-level error` (webhook/cli/logs.py).
- `exit_past_stuck_threads`: after serving, the process exits past threads still stuck on the API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger("webhook")
report_log = logging.getLogger("startup")  # what an operator sees while the webhook port is not open

T = TypeVar("T")


class StartupProbe(Generic[T]):
    """One blocking call (run in a thread) retried until it succeeds; its result goes to `apply` once."""

    def __init__(self, what: str, call: Callable[[], T], apply: Callable[[T], None], *, timeout: float = 6.0,
                 max_backoff: float = 30.0) -> None:
        self.what = what
        self._call, self._apply = call, apply
        self._timeout, self._max_backoff = timeout, max_backoff
        self.done = False
        self.last_error = ""
        self.attempts = 0

    def status(self) -> tuple[bool, str]:
        if self.done:
            return True, f"{self.what}: done"
        if not self.last_error:
            return False, f"waiting for {self.what}: first attempt in progress"
        return False, f"waiting for {self.what}: {self.last_error} (attempt {self.attempts})"

    def _in_thread(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[T]:
        """The call in a daemon thread of its own: one that hangs past `timeout` must not hold up the process's
        exit (asyncio.run waits for its default executor's threads)."""
        future: asyncio.Future[T] = loop.create_future()

        def settle(value: T | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)  # type: ignore[arg-type]

        def work() -> None:
            try:
                value = self._call()
            except BaseException as exc:  # handed to the event loop, which logs it and retries
                with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
                    loop.call_soon_threadsafe(settle, None, exc)
                return
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, value, None)

        threading.Thread(target=work, name="startup-probe", daemon=True).start()
        return future

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.5
        while not stop.is_set():
            self.attempts += 1
            try:
                value = await asyncio.wait_for(self._in_thread(loop), self._timeout)
            except Exception as exc:
                reason = f"timed out after {self._timeout:.0f}s" if isinstance(exc, TimeoutError) else \
                    f"{type(exc).__name__}: {exc}"
                self.last_error = " ".join(reason.split())[:300]
                log.warning(f"{self.what} failed; retrying", extra={"error": self.last_error, "retry-in": backoff,
                                                                    "attempt": self.attempts})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            self._apply(value)
            self.done = True
            self.last_error = ""
            log.info(f"{self.what} done", extra={"attempts": self.attempts})
            return


def exit_past_stuck_threads(code: int) -> None:
    """After `serve` has finished: when a thread of ours is still inside a call to an unresponsive API server (a
    watch, a live GET or a probe; daemon threads), end the process at once with `code` instead of running the
    interpreter's finalisation, which aborts (SIGABRT) when it tears OpenSSL down under such a thread. Logs and
    stdio are flushed first; nothing else is left to clean up at this point."""
    stuck = [t.name for t in threading.enumerate() if t.daemon and t.is_alive() and t is not threading.current_thread()
             and t.name.split("-")[0] in ("ServiceAccount", "Namespace", "startup", "cert")]
    if not stuck:
        return
    log.info("exiting past threads still waiting on the API server", extra={"threads": stuck})
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


@dataclass(frozen=True)
class Listening:
    """Where the webhook port is and what it serves, for the "serving on" line."""

    host: str
    port: int
    path: str
    cert_dir: str
    service_accounts: str  # "the cluster at https://..." or "files a.yaml, b/"

    @property
    def probe_host(self) -> str:
        return "127.0.0.1" if self.host in ("", "0.0.0.0") else ("::1" if self.host == "::" else self.host)

    def serving_line(self) -> str:
        where = f"https://{self.host or '0.0.0.0'}:{self.port}{self.path}"
        return f"serving on {where} (ServiceAccounts from {self.service_accounts})"


def cert_reason(cert_dir: str, port: int) -> str | None:
    """Why the serving certificate cannot be loaded from `--webhook-cert-dir`, or None when both files are there."""
    for name in ("tls.crt", "tls.key"):
        file = Path(cert_dir) / name
        try:
            with file.open("rb"):
                pass
        except OSError as exc:
            return (f"--webhook-cert-dir {cert_dir}: cannot read {file}: {exc.strerror}; the webhook port {port} "
                    "opens once tls.crt and tls.key are there (mount the certificate Secret, or write them with "
                    "`wi-webhook certs generate --out DIR`)")
    return None


def not_ready_reasons(cert: str | None, source: tuple[bool, str], rotation: str | None) -> list[str]:
    """Every reason serving is not ready, in the order an operator should fix them."""
    reasons = [] if rotation is None else [f"self-managed certificates are not ready: {rotation}"]
    if cert is not None:
        reasons.append(cert)
    if not source[0]:
        reasons.append(f"ServiceAccounts are not ready: {source[1]}")
    return reasons


async def _accepts(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def watch(listening: Listening, reasons: Callable[[], list[str]], *, interval: float = 0.5,
                grace: float = 2.0) -> None:
    """Log each new set of not-ready reasons (after `grace` seconds, so a normal start stays quiet), then the
    "serving on" line once the port accepts connections and nothing is missing. Returns after that line."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    reported: list[str] = []
    while True:
        current = reasons()
        if not current and await _accepts(listening.probe_host, listening.port):
            report_log.info(listening.serving_line())
            return
        if current and current != reported and loop.time() - started >= grace:
            for reason in current:
                report_log.warning("not serving yet: %s", reason)
            reported = current
        await asyncio.sleep(interval)


def bind_error(host: str, port: int, *, reuse_port: bool = False) -> str | None:
    """Why (host, port) cannot be listened on right now (e.g. "address already in use"), or None.

    Checked before serving so that the message can name the flag; the socket is closed again at once. With
    `reuse_port` the check binds as `serve --reuse-port` will (SO_REUSEPORT): a predecessor that also set it (same
    user) does not make the port "in use", anything else still does.
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        return f"cannot resolve {host!r}: {exc}"
    for family, kind, proto, _, address in infos[:1] if not host else infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                return f"cannot listen on port {port}: {exc.strerror or exc}"
    return None
