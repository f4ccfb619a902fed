"""Sustained load: 60 s at 1,000 reviews/s (80 % valid, 20 % denied) against one worker from the Go load
generator in bench/loadgen → zero errors and a stable RSS. Figures are printed; speed is not asserted."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import orjson
import pytest

from tests.processes import WebhookProcess
from tests.support import pod

ROOT = Path(__file__).resolve().parent.parent
SA = """apiVersion: v1
kind: ServiceAccount
metadata: {name: sa, namespace: ns, annotations: {azure.workload.identity/client-id: x}}
"""


def body(sa_name: str) -> bytes:
    return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                         "request": {"uid": "s", "namespace": "ns", "operation": "CREATE",
                                     "object": pod(sa_name=sa_name)}})


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_sixty_seconds_at_1000_per_second(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    subprocess.run([go, "build", "-o", str(tmp_path / "loadgen"), "."], cwd=ROOT / "bench/loadgen", check=True,
                   timeout=600, capture_output=True)
    (tmp_path / "sa.yaml").write_text(SA)
    (tmp_path / "valid.json").write_bytes(body("sa"))
    (tmp_path / "denied.json").write_bytes(body("missing"))
    server = WebhookProcess(tmp_path, ["--objects", str(tmp_path / "sa.yaml")])
    samples: list[float] = []
    try:
        server.wait_ready()
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(5):
                samples.append(rss_mb(server.proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        loads = [subprocess.Popen([str(tmp_path / "loadgen"), "-url", server.url, "-body", str(tmp_path / name),
                                   "-ca", str(server.ca_file), "-mode", "rate", "-rate", rate, "-conns", "32",
                                   "-duration", "60s", "-warmup", "0s"], stdout=subprocess.PIPE, text=True)
                 for name, rate in (("valid.json", "800"), ("denied.json", "200"))]
        results = [json.loads(load.communicate(timeout=180)[0]) for load in loads]
        stop.set()
        sampler.join(10)
        metrics = server.get(server.metrics_port, "/metrics")[1]
    finally:
        code = server.stop()
    with capsys.disabled():
        print(f"\nsustained: {sum(r['requests'] for r in results)} reviews in 60 s "
              f"({results[0]['per_second']:.0f}/s valid, {results[1]['per_second']:.0f}/s denied), "
              f"p99 {results[0]['p99_ms']:.1f} ms / {results[1]['p99_ms']:.1f} ms, "
              f"errors {results[0]['errors']} / {results[1]['errors']}, "
              f"RSS MB {' '.join(f'{s:.0f}' for s in samples)}")
    assert code == 0
    assert all(r["errors"] == 0 for r in results) and all(r["requests"] > 0 for r in results)
    assert 'decision="denied"' in metrics and 'decision="mutated"' in metrics
    steady = samples[2:]  # after warm-up
    assert steady and max(steady) - min(steady) < 30, samples
