"""Starting `wi-webhook serve` as a real subprocess for tests, on free 127.0.0.1 ports, and stopping it by PID."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from webhook.certificates import generate as certs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_certs(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Path:
    ca = certs.generate_ca()
    certs.write_bundle(directory, ca, certs.generate_serving(ca, list(hosts)))
    return directory / "ca.crt"


class WebhookProcess:
    """One `wi-webhook serve` process; `stop()` sends SIGTERM and waits (bounded), then SIGKILL."""

    def __init__(self, workdir: Path, extra_args: list[str], env: dict[str, str] | None = None,
                 cert_dir: Path | None = None, ports: tuple[int, int, int] | None = None) -> None:
        self.workdir = workdir
        self.cert_dir = cert_dir or workdir / "certs"
        if cert_dir is None:
            self.ca_file = make_certs(self.cert_dir)
        else:
            self.ca_file = self.cert_dir / "ca.crt"
        # `ports` (webhook, health, metrics): another process's, for `serve --reuse-port` successors.
        self.port, self.health_port, self.metrics_port = ports or (free_port(), free_port(), free_port())
        earlier = len(list(workdir.glob(f"webhook-{self.port}*.log")))
        self.log_path = workdir / (f"webhook-{self.port}-{earlier}.log" if earlier else f"webhook-{self.port}.log")
        args = [sys.executable, "-m", "webhook.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--health-addr", f"127.0.0.1:{self.health_port}", "--metrics-addr", f"127.0.0.1:{self.metrics_port}",
                "--webhook-cert-dir", str(self.cert_dir), "--cert-check-interval", "0.2", *extra_args]
        full_env = {**os.environ, "AZURE_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47", **(env or {})}
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/mutate-v1-pod"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"webhook exited with {self.proc.returncode}:\n{self.logs()[-3000:]}")
            try:
                status, _ = self.get(self.health_port, "/readyz")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"webhook not ready after {timeout}s:\n{self.logs()[-3000:]}")

    def get(self, port: int, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def connection(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ssl_context(), timeout=15)

    def post(self, body: bytes, content_type: str = "application/json",
             conn: http.client.HTTPSConnection | None = None) -> tuple[int, bytes]:
        own = conn is None
        conn = conn or self.connection()
        try:
            conn.request("POST", "/mutate-v1-pod", body=body, headers={"Content-Type": content_type})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            if own:
                conn.close()

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return int(self.proc.returncode)

    def __enter__(self) -> WebhookProcess:
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()
