"""`serve --reuse-port` (serving/handoff.py) with real processes on the same 127.0.0.1 ports: on SIGTERM the first
keeps serving until a successor answers /readyz, then leaves without failing a review; alone, it gives up after
--shutdown-delay with a warning. Without --reuse-port a second process still cannot bind the ports."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import WebhookProcess
from tests.test_hardening import SA, Client, report, start

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


def successor(first: WebhookProcess, workdir: Path, *args: str) -> WebhookProcess:
    """A second `serve` on the first one's ports and certificates (the clients trust that CA)."""
    workdir.mkdir()
    (workdir / "sa.yaml").write_text(SA)
    return WebhookProcess(workdir, ["--objects", str(workdir / "sa.yaml"), *args], cert_dir=first.cert_dir,
                          ports=(first.port, first.health_port, first.metrics_port))


def exit_time(process: WebhookProcess, timeout: float) -> tuple[float | None, int | None]:
    """Wait (bounded) for the process to exit; (monotonic time it was seen gone, exit code) or (None, None)."""
    try:
        code = process.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None, None
    return time.monotonic(), code


def test_sigterm_hands_the_port_to_a_successor_without_a_failed_review(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a").mkdir()
    first = start(tmp_path / "a", "--reuse-port", "--shutdown-delay", "20", "--shutdown-timeout", "10")
    # Keep-alive clients (like the API server's pooled connections) and a new connection per review.
    clients = [Client(lambda: first, keep_alive=True) for _ in range(2)] + \
              [Client(lambda: first, keep_alive=False) for _ in range(2)]
    second: WebhookProcess | None = None
    try:
        for client in clients:
            client.start()
        time.sleep(1.0)
        before = sum(c.ok for c in clients)
        first.proc.send_signal(15)
        # No successor yet: the first must keep serving (and wait), not stop.
        time.sleep(1.5)
        assert first.proc.poll() is None, f"exited without a successor:\n{first.logs()[-2000:]}"
        alone = sum(c.ok for c in clients)
        second = successor(first, tmp_path / "b", "--reuse-port")
        gone_at, code = exit_time(first, 20)
        assert gone_at is not None, f"the first did not exit after its successor started:\n{first.logs()[-2000:]}"
        # Its /readyz is closed: a 200 now is the successor's, which the first waited for.
        assert second.get(second.health_port, "/readyz")[0] == 200
        at_exit = sum(c.ok for c in clients)
        time.sleep(1.0)
    finally:
        for client in clients:
            client.stop()
    after = sum(c.ok for c in clients)
    assert second is not None
    assert second.proc.poll() is None, second.logs()[-2000:]
    assert second.stop() == 0
    failures = [f for c in clients for f in c.failures]
    report(capsys, f"hand-off: {after} reviews ({before} before SIGTERM, {alone - before} while alone and "
                   f"terminating, {after - at_exit} after the first exited), failures {len(failures)}")
    assert code == 0
    assert failures == [], failures[:5]
    assert "handed off to a ready successor" in first.logs(), first.logs()[-2000:]
    assert alone > before and after > at_exit  # served while waiting; the successor serves alone afterwards


def test_alone_it_stops_after_the_shutdown_delay_with_a_warning(tmp_path: Path) -> None:
    process = start(tmp_path, "--reuse-port", "--shutdown-delay", "1.5", "--shutdown-timeout", "5")
    started = time.monotonic()
    code = process.stop(timeout=15)
    took = time.monotonic() - started
    assert code == 0 and 1.5 <= took < 8, (code, took)
    assert "no successor answered /readyz within --shutdown-delay" in process.logs(), process.logs()[-2000:]


def test_without_reuse_port_a_second_process_cannot_bind(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    first = start(tmp_path / "a")
    try:
        for args in ([], ["--reuse-port"]):  # both must have set SO_REUSEPORT
            second = successor(first, tmp_path / f"b{len(args)}", *args)
            code = second.proc.wait(30)
            assert code == 2 and "--health-addr" in second.logs() and "in use" in second.logs(), second.logs()
        status, _ = first.get(first.health_port, "/readyz")
        assert status == 200
    finally:
        assert first.stop() == 0


def test_reuse_port_with_several_workers_is_refused_naming_both_flags(tmp_path: Path) -> None:
    (tmp_path / "sa.yaml").write_text(SA)
    result = subprocess.run([sys.executable, "-m", "webhook.cli", "serve", "--reuse-port", "--workers", "2",
                             "--objects", str(tmp_path / "sa.yaml")], capture_output=True, text=True, timeout=60,
                            env={"AZURE_TENANT_ID": TENANT, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--reuse-port" in lines[0] and "--workers 2" in lines[0] \
        and "--workers 1" in lines[0], result.stderr


