"""Hardening through the real HTTPS server: slow clients, handshake floods, certificate swaps under load, and
SIGTERM under load. Each test prints its figures; none asserts on speed, only on failures."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from tests.processes import WebhookProcess, make_certs
from tests.support import pod
from webhook.certificates import generate as certs

SA = """apiVersion: v1
kind: ServiceAccount
metadata: {name: sa, namespace: ns, annotations: {azure.workload.identity/client-id: x}}
"""
BODY = orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                     "request": {"uid": "h", "namespace": "ns", "operation": "CREATE", "object": pod()}})


def start(tmp_path: Path, *args: str, cert_dir: Path | None = None) -> WebhookProcess:
    (tmp_path / "sa.yaml").write_text(SA)
    process = WebhookProcess(tmp_path, ["--objects", str(tmp_path / "sa.yaml"), *args], cert_dir=cert_dir)
    process.wait_ready()
    return process


class Client(threading.Thread):
    """Sends reviews in a loop (keep-alive, or a new connection each time) until stopped; counts outcomes."""

    def __init__(self, pick: Callable[[], WebhookProcess], keep_alive: bool = True, limit: int = 100_000) -> None:
        super().__init__(daemon=True)
        self.pick, self.keep_alive, self.limit = pick, keep_alive, limit
        self.ok = 0
        self.failures: list[str] = []
        self.latencies: list[float] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        conns: dict[int, object] = {}
        while not self.stop_event.is_set() and self.ok + len(self.failures) < self.limit:
            server = self.pick()
            conn = conns.get(server.port) if self.keep_alive else None
            if conn is None:
                conn = server.connection()
                if self.keep_alive:
                    conns[server.port] = conn
            started = time.perf_counter()
            try:
                status, body = server.post(BODY, conn=conn)  # type: ignore[arg-type]
                if status == 200 and b'"allowed":true' in body:
                    self.ok += 1
                    self.latencies.append(time.perf_counter() - started)
                else:
                    self.failures.append(f"HTTP {status}")
            except (OSError, ssl.SSLError, ConnectionError) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                conns.pop(server.port, None)
            finally:
                if not self.keep_alive:
                    conn.close()  # type: ignore[attr-defined]

    def stop(self) -> None:
        self.stop_event.set()
        self.join(30)

    def p99_ms(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[int(0.99 * (len(ordered) - 1))] * 1000 if ordered else 0.0


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\nhardening: {text}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WebhookProcess]:
    process = start(tmp_path)
    yield process
    assert process.stop() == 0


def test_slow_clients_do_not_block_others(server: WebhookProcess, capsys: pytest.CaptureFixture[str]) -> None:
    slow: list[socket.socket] = []
    context = server.ssl_context()
    for index in range(40):  # half stall before the TLS handshake, half trickle an HTTP request byte by byte
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        if index % 2:
            tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
            tls.sendall(b"POST /mutate-v1-pod HTTP/1.1\r\nHost: x\r\n")
            slow.append(tls)
        else:
            slow.append(raw)
    client = Client(lambda: server)
    client.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # bounded slowloris: one header byte per slow connection per 0.5 s
        for sock in slow[1::2]:
            with contextlib.suppress(OSError):
                sock.sendall(b"X")
        time.sleep(0.5)
    client.stop()
    for sock in slow:
        sock.close()
    report(capsys, f"40 slow connections: {client.ok} reviews answered meanwhile, p99 {client.p99_ms():.1f} ms, "
                   f"{len(client.failures)} failures")
    assert client.failures == [] and client.ok > 0
    assert server.get(server.health_port, "/healthz")[0] == 200


def test_handshake_flood_does_not_starve_keep_alive(server: WebhookProcess,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    keep_alive = Client(lambda: server)
    flood = [Client(lambda: server, keep_alive=False) for _ in range(6)]
    for thread in (keep_alive, *flood):
        thread.start()
    time.sleep(5)
    for thread in (keep_alive, *flood):
        thread.stop()
    new_connections = sum(t.ok for t in flood)
    report(capsys, f"handshake flood: {new_connections} new-connection reviews; keep-alive client "
                   f"{keep_alive.ok} reviews, p99 {keep_alive.p99_ms():.1f} ms, failures "
                   f"{len(keep_alive.failures)} / {sum(len(t.failures) for t in flood)}")
    assert keep_alive.failures == [] and keep_alive.ok > 0
    assert all(t.failures == [] for t in flood)


def test_certificate_swaps_under_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert_dir = tmp_path / "certs"
    make_certs(cert_dir)
    ca = certs.KeyPair((cert_dir / "ca.crt").read_bytes(), (cert_dir / "ca.key").read_bytes())
    server = start(tmp_path, cert_dir=cert_dir)
    clients = [Client(lambda: server), Client(lambda: server, keep_alive=False)]
    try:
        for client in clients:
            client.start()
        for _ in range(5):  # new serving certificates from the same CA, swapped the way a Secret volume updates
            pair = certs.generate_serving(ca, ["127.0.0.1"])
            staging = tmp_path / "staging"
            staging.mkdir(exist_ok=True)
            (staging / "tls.crt").write_bytes(pair.cert_pem)
            (staging / "tls.key").write_bytes(pair.key_pem)
            for name in ("tls.key", "tls.crt"):
                shutil.copy(staging / name, cert_dir / f".{name}.new")
                (cert_dir / f".{name}.new").replace(cert_dir / name)
            time.sleep(0.8)
    finally:
        for client in clients:
            client.stop()
        metrics = server.get(server.metrics_port, "/metrics")[1]
        code = server.stop()
    reloads = int(float(next(line.split()[-1] for line in metrics.splitlines()
                             if line.startswith('wi_webhook_certificate_reloads_total{result="ok"}'))))
    report(capsys, f"5 certificate swaps: {reloads} loads, {sum(c.ok for c in clients)} reviews, "
                   f"{sum(len(c.failures) for c in clients)} failures")
    assert code == 0 and all(c.failures == [] for c in clients), [c.failures[:3] for c in clients]
    assert reloads >= 2


def test_sigterm_under_load_loses_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two replicas; the client follows readiness like Service endpoints do. SIGTERM on the first: it turns
    unready, keeps serving for --shutdown-delay, finishes in-flight reviews and exits 0 within its grace period."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = start(tmp_path / "a", "--shutdown-delay", "1.5", "--shutdown-timeout", "10")
    second = start(tmp_path / "b")
    ready = {"first": True}

    def watch() -> None:
        while ready["first"]:
            try:
                ready["first"] = first.get(first.health_port, "/readyz")[0] == 200
            except OSError:
                ready["first"] = False
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    clients = [Client(lambda: first if ready["first"] else second) for _ in range(4)]
    try:
        for client in clients:
            client.start()
        time.sleep(1.5)
        before = sum(c.ok for c in clients)
        started = time.monotonic()
        code = first.stop(timeout=20)
        exited_after = time.monotonic() - started
        time.sleep(1)
    finally:
        for client in clients:
            client.stop()
        second.stop()
    total = sum(c.ok for c in clients)
    report(capsys, f"SIGTERM under load: {total} reviews ({before} before the signal), first replica exited "
                   f"{code} after {exited_after:.1f}s, failures {sum(len(c.failures) for c in clients)}")
    assert code == 0 and exited_after < 12
    assert all(c.failures == [] for c in clients), [c.failures[:3] for c in clients]
    assert total > before
