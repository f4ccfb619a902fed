"""Helpers for the memory and connection bound tests (tests/test_limits.py) and hack/memory_figures.py: RSS of a
process, TLS connections held open, large reviews sent concurrently."""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Any

import orjson

from tests.processes import WebhookProcess
from tests.support import pod


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak since start) of a process, in KB, from /proc/<pid>/status."""
    figures = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                figures[name] = int(value.split()[0])
    return figures


def review(namespace: str = "ns", uid: str = "u", obj: Any = None) -> bytes:
    return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                         "request": {"uid": uid, "namespace": namespace, "operation": "CREATE",
                                     "object": pod() if obj is None else obj}})


def large_pod(size: int = 3 * 1024 * 1024) -> dict[str, Any]:
    """A labelled pod of about `size` bytes of JSON made of many small objects (env entries), the costly shape."""
    big = pod()
    entries = [{"name": f"VAR_{index}", "value": "v" * 60} for index in range(size // 90)]
    big["spec"]["containers"][0]["env"] = entries
    return big


def open_idle(server: WebhookProcess, count: int) -> list[ssl.SSLSocket | socket.socket]:
    """`count` TLS connections that complete the handshake and then send nothing (some may be refused)."""
    context = server.ssl_context()
    held: list[ssl.SSLSocket | socket.socket] = []
    for _ in range(count):
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        try:
            held.append(context.wrap_socket(raw, server_hostname="127.0.0.1"))
        except (OSError, ssl.SSLError):
            raw.close()
    return held


def closed_by_server(sock: ssl.SSLSocket | socket.socket, wait: float = 0.05) -> bool:
    """True when the server has closed this connection (EOF or reset), without sending anything."""
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except (OSError, ssl.SSLError):
        return True


def concurrent_posts(server: WebhookProcess, bodies: list[bytes]) -> list[int]:
    """POST every body at once, each on its own connection; the HTTP statuses (0 for a connection error)."""
    statuses = [0] * len(bodies)

    def send(index: int) -> None:
        try:
            statuses[index] = server.post(bodies[index])[0]
        except OSError:
            statuses[index] = 0

    threads = [threading.Thread(target=send, args=(index,), daemon=True) for index in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return statuses
