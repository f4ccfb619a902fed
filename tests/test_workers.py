"""`serve --workers 2`: both workers answer on one port, metrics aggregate, a dead worker is replaced, SIGTERM
stops everything cleanly."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import orjson

from tests.processes import WebhookProcess
from tests.support import pod

SA = """apiVersion: v1
kind: ServiceAccount
metadata: {name: sa, namespace: ns, annotations: {azure.workload.identity/client-id: x}}
"""


def review(uid: str) -> bytes:
    return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                         "request": {"uid": uid, "namespace": "ns", "operation": "CREATE", "object": pod()}})


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def settled_metrics(process: WebhookProcess, mutated: int, timeout: float = 10) -> str:
    """The supervisor's /metrics once it counts `mutated` reviews (bounded wait)."""
    name = 'wi_webhook_admission_requests_total{decision="mutated",namespace="ns"}'
    deadline = time.monotonic() + timeout
    while True:
        metrics = process.get(process.metrics_port, "/metrics")[1]
        if metric(metrics, name) == mutated or time.monotonic() > deadline:
            assert metric(metrics, name) == mutated, metrics[:3000]
            return metrics
        time.sleep(0.2)


def worker_pids(process: WebhookProcess) -> list[int]:
    ready = process.get(process.health_port, "/readyz")[1]
    assert ready.startswith("ok"), ready
    children = Path(f"/proc/{process.proc.pid}/task/{process.proc.pid}/children").read_text().split()
    return sorted(int(pid) for pid in children)


def test_two_workers_share_the_port(tmp_path: Path) -> None:
    (tmp_path / "sa.yaml").write_text(SA)
    process = WebhookProcess(tmp_path, ["--objects", str(tmp_path / "sa.yaml"), "--workers", "2"])
    try:
        process.wait_ready(60)
        pids = worker_pids(process)
        assert len(pids) == 2
        for i in range(60):  # new connections spread over both workers by the kernel
            status, body = process.post(review(f"w{i}"))
            assert status == 200 and orjson.loads(body)["response"]["uid"] == f"w{i}"
        metrics = settled_metrics(process, 60)  # each worker writes its per-review figures about once a second
        assert metric(metrics, "wi_webhook_admission_duration_seconds_count") == 60
        per_worker = [line for line in metrics.splitlines() if line.startswith("wi_webhook_serviceaccount_cache")]
        assert per_worker, metrics[:2000]

        os.kill(pids[0], signal.SIGKILL)  # a crashed worker is replaced and the port keeps answering
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if len(worker_pids(process)) == 2 and pids[0] not in worker_pids(process):
                    break
            except AssertionError:
                pass
            time.sleep(0.2)
        assert pids[0] not in worker_pids(process) and len(worker_pids(process)) == 2
        assert process.post(review("after"))[0] == 200
        settled_metrics(process, 61)  # the killed worker's reviews still count: the totals never go down
    finally:
        code = process.stop()
    assert code == 0, process.logs()[-2000:]
    assert "Traceback" not in process.logs()
