"""Helpers for the memory and connection bound tests (tests/test_limits.py) and hack/memory_figures.py: RSS of a
process, TLS connections held open, large reviews sent concurrently."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import orjson

from tests.processes import WebhookProcess
from tests.support import pod

CLIENT_ID = "azure.workload.identity/client-id"


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


def account(index: int) -> dict[str, Any]:
    """A realistic ServiceAccount: the client-id annotation, kubectl's last-applied annotation, a few labels."""
    return {"metadata": {"name": f"sa-{index}", "namespace": f"team-{index % 300}", "resourceVersion": str(index),
                         "uid": f"00000000-0000-0000-0000-{index:012d}",
                         "annotations": {CLIENT_ID: f"{index:08d}-1111-2222-3333-444444444444",
                                         "kubectl.kubernetes.io/last-applied-configuration": "{" + "x" * 200 + "}"},
                         "labels": {"app": f"app-{index % 50}", "team": f"team-{index % 300}"}}}


def stub_api_server(total: int, accounts: Callable[[int, int], list[dict[str, Any]]] | None = None
                    ) -> ThreadingHTTPServer:
    """A thread serving what the webhook's list+watch asks for, as kube-apiserver would (paged lists with continue
    tokens; watches stay open and idle): `total` ServiceAccounts, `accounts(start, stop)` of them per page
    (default: `account(i)` each)."""
    page = accounts or (lambda start, stop: [account(i) for i in range(start, stop)])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: Any) -> None:
            return None

        def do_GET(self) -> None:
            url = urlparse(self.path)
            query = {key: values[0] for key, values in parse_qs(url.query).items()}
            if query.get("watch") in ("true", "1"):  # an idle watch until its timeout
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                time.sleep(min(float(query.get("timeoutSeconds", "30")), 30))
                self.wfile.write(b"0\r\n\r\n")
                return
            if url.path.rstrip("/") == "/version":
                body = {"kind": "Version", "major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "0" * 40,
                        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
                        "compiler": "gc", "platform": "linux/amd64"}
            elif url.path == "/api/v1/serviceaccounts":
                start = int(query.get("continue") or 0)
                stop = min(start + int(query.get("limit", "500")), total)
                more = {"continue": str(stop)} if stop < total else {}
                body: dict[str, Any] = {"kind": "ServiceAccountList", "items": page(start, stop),
                                        "metadata": {"resourceVersion": "1", **more}}
            elif url.path == "/api/v1/namespaces":
                body = {"kind": "NamespaceList", "metadata": {"resourceVersion": "1"},
                        "items": [{"metadata": {"name": f"team-{i}"}} for i in range(300)]}
            else:
                body = {"kind": "Status", "code": 404}
            data = orjson.dumps(body)
            self.send_response(404 if body["kind"] == "Status" else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stub_kubeconfig(path: Any, server: ThreadingHTTPServer) -> Any:
    """A kubeconfig pointing at a stub_api_server."""
    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: stub, cluster: {{server: "http://127.0.0.1:{server.server_address[1]}"}}}}]
users: [{{name: stub, user: {{token: stub}}}}]
contexts: [{{name: stub, context: {{cluster: stub, user: stub}}}}]
current-context: stub
""")
    return path
