"""What `serve` says while it starts: every reason it is not serving yet, then one "serving on ..." line.

The server itself (webhook/serving/server.py) waits quietly for its certificates and ServiceAccount cache; an operator
looking at `kubectl logs` needs to see why the webhook port is not open, so this watcher runs beside it and logs
each reason when it changes, and the "serving on" line once the webhook port accepts connections. These lines go to
the `startup` logger, which logs at every level except `--log-level error` (webhook/cli/logs.py).

`not_ready_reasons` is a pure function of what it is given; `watch` is the loop (bounded by the server's lifetime:
the caller cancels it when serving ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("startup")


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
            log.info(listening.serving_line())
            return
        if current and current != reported and loop.time() - started >= grace:
            for reason in current:
                log.warning("not serving yet: %s", reason)
            reported = current
        await asyncio.sleep(interval)


def bind_error(host: str, port: int, *, reuse_port: bool = False) -> str | None:
    """Why (host, port) cannot be listened on right now (e.g. "address already in use"), or None.

    Checked before serving so that the message can name the flag; the socket is closed again at once. With
    `reuse_port` the check binds as `serve --reuse-port` will (SO_REUSEPORT): a predecessor that also set it (same
    user) does not make the port "in use", anything else still does.
    """
    import socket

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
