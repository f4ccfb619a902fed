"""Benchmark `/mutate-v1-pod` against a bare aiohttp+orjson baseline measured in the same run.

Builds the Go load generator (bench/loadgen, stdlib only), starts each server pinned to CPU 0 (taskset) and
drives it from CPU 1 over TLS keep-alive: saturation throughput, latency percentiles at fixed rates (open loop,
measured from the scheduled send time), and new-connection handshakes/s; with a small (~3 KB) and a large
(~200 KB) realistic pod. Prints a table and the ratio ours/baseline. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.processes import free_port, make_certs  # noqa: E402

SA = """apiVersion: v1
kind: ServiceAccount
metadata:
  name: app
  namespace: bench
  annotations: {azure.workload.identity/client-id: 00000000-1111-2222-3333-444444444444}
"""


def pod(size: str) -> dict[str, Any]:
    containers = [{"name": f"c{i}", "image": f"registry.example.com/team/app-{i}:1.2.3",
                   "ports": [{"containerPort": 8080 + i, "protocol": "TCP"}],
                   "env": [{"name": f"SETTING_{j}", "value": f"value-{j}"} for j in range(12)],
                   "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                   "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                   "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080 + i}}} for i in range(3)]
    annotations = {"azure.workload.identity/service-account-token-expiration": "7200"}
    if size == "large":  # a kubectl last-applied-configuration of a big workload
        annotations["kubectl.kubernetes.io/last-applied-configuration"] = "x" * (196 * 1024)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "app-7d9f8c-", "namespace": "bench", "annotations": annotations,
                         "labels": {"app": "app", "azure.workload.identity/use": "true"}},
            "spec": {"serviceAccountName": "app", "containers": containers,
                     "volumes": [{"name": "data", "emptyDir": {}}]}}


def review(size: str) -> bytes:
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                       "request": {"uid": "bench", "namespace": "bench", "operation": "CREATE",
                                   "object": pod(size)}}).encode()


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def pin(cpu: str) -> list[str]:
    return ["taskset", "-c", cpu] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def server_commands(name: str, port: int, workers: int, tmp: Path) -> list[list[str]]:
    if name == "baseline":  # N bare processes sharing the port, like `--workers N`
        return [[sys.executable, str(ROOT / "bench/baseline.py"), "--port", str(port), "--cert-dir",
                 str(tmp / "certs"), *(["--reuse-port"] if workers > 1 else [])] for _ in range(workers)]
    return [[sys.executable, "-m", "webhook.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--health-addr", f"127.0.0.1:{free_port()}", "--metrics-addr", f"127.0.0.1:{free_port()}",
             "--webhook-cert-dir", str(tmp / "certs"), "--objects", str(tmp / "sa.yaml"),
             "--workers", str(workers)]]


def loadgen(binary: Path, url: str, body: Path, ca: Path, args: list[str], cpu: str = "1") -> dict[str, Any]:
    out = subprocess.run([*pin(cpu), str(binary), "-url", url, "-body", str(body), "-ca", str(ca), *args],
                         capture_output=True, text=True, timeout=300, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", default="5s")
    parser.add_argument("--rates", default="500,1000,2000")
    parser.add_argument("--sizes", default="small,large")
    parser.add_argument("--workers", default="1,2", help="server processes; with 2 the load shares the cores")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wi-bench-") as tmp_name:
        tmp = Path(tmp_name)
        binary = tmp / "loadgen"
        subprocess.run(["go", "build", "-o", str(binary), "."], cwd=ROOT / "bench/loadgen", check=True, timeout=600)
        ca = make_certs(tmp / "certs")
        (tmp / "sa.yaml").write_text(SA)
        env = {**os.environ, "AZURE_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47"}
        rows: list[tuple[str, str, str, dict[str, Any]]] = []
        for workers in (int(w) for w in args.workers.split(",")):
            server_cpu, load_cpu = ("0", "1") if workers == 1 else ("0,1", "0,1")
            for size in args.sizes.split(","):
                body = tmp / f"{size}.json"
                body.write_bytes(review(size))
                for name in ("baseline", "wi-webhook"):
                    port = free_port()
                    procs = [subprocess.Popen([*pin(server_cpu), *command], env=env, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL)
                             for command in server_commands(name, port, workers, tmp)]
                    label = f"{name} x{workers}"
                    try:
                        wait_port(port, procs[0])
                        url = f"https://127.0.0.1:{port}/mutate-v1-pod"
                        rows.append((size, label, "saturation", loadgen(
                            binary, url, body, ca, ["-mode", "sat", "-conns", "16", "-duration", args.duration],
                            load_cpu)))
                        for rate in args.rates.split(","):
                            rows.append((size, label, f"{rate}/s", loadgen(
                                binary, url, body, ca, ["-mode", "rate", "-rate", rate, "-conns", "64",
                                                        "-duration", args.duration], load_cpu)))
                        rows.append((size, label, "handshakes", loadgen(
                            binary, url, body, ca, ["-mode", "handshake", "-conns", "8", "-duration",
                                                    args.duration], load_cpu)))
                    finally:
                        for proc in procs:
                            proc.terminate()
                            proc.wait(30)
        report(rows)
    return 0


def report(rows: list[tuple[str, str, str, dict[str, Any]]]) -> None:
    print(f"{'pod':6} {'server':14} {'load':11} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
          f"{'errors':>6}")
    for size, name, load, r in rows:
        print(f"{size:6} {name:14} {load:11} {r['per_second']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
              f"{r['p999_ms']:9.2f} {r['errors']:6d}")
    print("\nratio wi-webhook / baseline (throughput):")
    index = {(s, n, load): r for s, n, load, r in rows}
    for size, name, load, r in rows:
        if name.startswith("baseline"):
            workers = name.split()[-1]
            ours = index[(size, f"wi-webhook {workers}", load)]
            print(f"  {workers:3} {size:6} {load:11} {ours['per_second'] / max(r['per_second'], 1e-9):5.2f}")


if __name__ == "__main__":
    sys.exit(main())
