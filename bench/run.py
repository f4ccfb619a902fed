"""Benchmark `/mutate-v1-pod` against a bare aiohttp+orjson baseline measured in the same run (see bench/README.md).

Builds the Go load generator (bench/loadgen, stdlib only), starts each server pinned to CPU 0 (taskset) and
drives it from CPU 1 over TLS keep-alive: saturation throughput, latency percentiles at fixed rates, new-connection
handshakes/s. Pods are a small (~4 KB) and a large (~200 KB) realistic one, as a burst of identical pods (a
Deployment scale-up) and as distinct pods. A Go server with a fixed answer shows the harness's own floor.
Prints a table and the ratio ours/baseline. Not a test, and no floor: it shows regressions (`--compare`).
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


def pod(size: str, scenario: str) -> dict[str, Any]:
    """A pod as the API server sends it to mutating webhooks: with managedFields and the kube-api-access-xxxxx
    token volume (a fresh random name per request) that its ServiceAccount admission plugin has already added.

    burst: a Deployment scale-up (generateName; the pods are identical but for that volume name).
    distinct: every pod named differently (like a StatefulSet), so every decision is computed.
    """
    token = "kube-api-access-{{rand5}}"
    containers = [{"name": f"c{i}", "image": f"registry.example.com/team/app-{i}:1.2.3",
                   "ports": [{"containerPort": 8080 + i, "protocol": "TCP"}],
                   "env": [{"name": f"SETTING_{j}", "value": f"value-{j}"} for j in range(12)],
                   "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                   "volumeMounts": [{"name": "data", "mountPath": "/data"},
                                    {"name": token, "readOnly": True,
                                     "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                   "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080 + i}}} for i in range(3)]
    annotations = {"azure.workload.identity/service-account-token-expiration": "7200"}
    if size == "large":  # a kubectl last-applied-configuration of a big workload
        annotations["kubectl.kubernetes.io/last-applied-configuration"] = "x" * (196 * 1024)
    metadata: dict[str, Any] = {
        "namespace": "bench", "annotations": annotations,
        "labels": {"app": "app", "pod-template-hash": "7d9f8c", "azure.workload.identity/use": "true"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "app-7d9f8c",
                             "uid": "5f1c1e4e-8a4b-4d0e-9a53-0d6f2b1c7e11", "controller": True,
                             "blockOwnerDeletion": True}],
        "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                           "time": "2026-11-27T21:26:24Z", "fieldsType": "FieldsV1",
                           "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}}}}}]}
    if scenario == "burst":
        metadata["generateName"] = "app-7d9f8c-"
    else:
        metadata["name"] = "app-{{seq}}"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"serviceAccountName": "app", "containers": containers,
                     "volumes": [{"name": "data", "emptyDir": {}},
                                 {"name": token, "projected": {"defaultMode": 420, "sources": [
                                     {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                                     {"configMap": {"name": "kube-root-ca.crt",
                                                    "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}]}}


def review(size: str, scenario: str = "burst") -> bytes:
    """The AdmissionReview; {{uid}}, {{seq}} and {{rand5}} are filled per request by the load generator. Compact,
    as the API server encodes it (Go's encoding/json writes no spaces)."""
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                       "request": {"uid": "{{uid}}", "namespace": "bench", "operation": "CREATE",
                                   "object": pod(size, scenario)}}, separators=(",", ":")).encode()


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30, log: Path | None = None) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {' '.join(map(str, proc.args))}\n{output}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def pin(cpu: str) -> list[str]:
    return ["taskset", "-c", cpu] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def server_commands(name: str, port: int, workers: int, tmp: Path, binary: Path,
                    compare: Path | None = None) -> list[list[str]]:
    if name == "go floor":  # the harness floor: a Go server with a fixed answer
        return [[str(binary), "-serve", f"127.0.0.1:{port}", "-cert-dir", str(tmp / "certs")]]
    if name == "baseline":  # N bare processes sharing the port, like `--workers N`
        return [[sys.executable, str(ROOT / "bench/baseline.py"), "--port", str(port), "--cert-dir",
                 str(tmp / "certs"), *(["--reuse-port"] if workers > 1 else [])] for _ in range(workers)]
    # wi-webhook from this checkout, or (COMPARE) from the source tree given with --compare, run in place: Python puts
    # the working directory first on the path for `-m`, ahead of this environment's editable install.
    return [[sys.executable, "-m", "webhook.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--health-addr", f"127.0.0.1:{free_port()}", "--metrics-addr", f"127.0.0.1:{free_port()}",
             "--webhook-cert-dir", str(tmp / "certs"), "--objects", str(tmp / "sa.yaml"),
             "--workers", str(workers)]]


def server_log(tmp: Path) -> Any:
    """Where a server's stderr goes: a file (a pipe nobody reads would fill up and stall the server)."""
    return (tmp / "servers.log").open("ab")


def server_cwd(name: str, compare: Path | None) -> Path:
    return compare if name == COMPARE and compare else ROOT


def loadgen(binary: Path, url: str, body: Path, ca: Path, args: list[str], cpu: str = "1") -> dict[str, Any]:
    out = subprocess.run([*pin(cpu), str(binary), "-url", url, "-body", str(body), "-ca", str(ca), *args],
                         capture_output=True, text=True, timeout=300, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


SERVERS = (("go floor", "burst"), ("baseline", "burst"), ("wi-webhook", "burst"), ("wi-webhook", "distinct"))
COMPARE = "wi-webhook compare"  # with --compare DIR: the webhook from another source tree, e.g. an older commit


def interleaved(servers: tuple[tuple[str, str], ...], args: argparse.Namespace, tmp: Path, binary: Path, ca: Path,
                env: dict[str, str]) -> dict[str, float]:
    """Saturation ratios that survive a noisy host: every server runs at once (one worker each, all pinned to CPU 0,
    idle while another is measured) and they are measured in turn, round after round. Within a round the baseline
    of the same pod size is measured before the first server and again after each one, and each server's ratio is
    to the mean of the two baseline measurements around it: the host's speed drifts by tens of percent over a
    minute here, and bracketing cancels a drift that is linear over one server's slot instead of charging it to
    whichever server came last. Reports each server's median req/s and median ratio, and (unless --round-rate 0)
    its median p99 at that fixed rate (once per round, after the baseline slot that follows the server's)."""
    import statistics

    procs: list[subprocess.Popen[bytes]] = []
    targets: dict[str, list[tuple[str, str, Path]]] = {}  # pod size -> [(label, url, body)], the baseline first
    try:
        for size in args.sizes.split(","):
            targets[size] = []
            for name, scenario in servers:
                label = f"{size} {name}" + (f" {scenario}" if name.startswith("wi-webhook") else "")
                if name == "go floor" or (name != "baseline" and args.only
                                          and not any(part in label for part in args.only.split(","))):
                    continue
                body = tmp / f"{size}-{scenario}.json"
                body.write_bytes(review(size, scenario))
                port = free_port()
                [command] = server_commands(name, port, 1, tmp, binary)
                procs.append(subprocess.Popen([*pin("0"), *command], env=env, stdout=subprocess.DEVNULL,
                                              stderr=server_log(tmp), cwd=server_cwd(name, args.compare)))
                wait_port(port, procs[-1], log=tmp / "servers.log")
                targets[size].append((label, f"https://127.0.0.1:{port}/mutate-v1-pod", body))
        labels = [label for group in targets.values() for label, _, _ in group]
        rates: dict[str, list[float]] = {label: [] for label in labels}
        ratios: dict[str, list[float]] = {label: [] for label in labels}
        p99s: dict[str, list[float]] = {label: [] for label in labels}

        def saturation(label: str, url: str, body: Path) -> float:
            rate: float = loadgen(binary, url, body, ca, ["-mode", "sat", "-conns", "16", "-duration",
                                                          args.duration])["per_second"]
            rates[label].append(rate)
            return rate

        def p99(label: str, url: str, body: Path) -> None:
            if args.round_rate:
                p99s[label].append(loadgen(binary, url, body, ca, [
                    "-mode", "rate", "-rate", str(args.round_rate), "-conns", "64", "-duration",
                    args.duration])["p99_ms"])

        for _ in range(args.rounds):
            for base, *others in targets.values():
                before = saturation(*base)
                ratios[base[0]].append(1.0)
                p99(*base)
                for label, url, body in others:
                    ours = saturation(label, url, body)
                    after = saturation(*base)
                    ratios[label].append(ours / ((before + after) / 2))
                    before = after
                    p99(label, url, body)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
    print(f"saturation, one worker, {args.rounds} rounds of {args.duration}, each server between two baseline "
          "measurements (medians):")
    print(f"{'server':36} {'req/s':>8} {'ratio':>6}   per-round ratios")
    for label in labels:
        print(f"{label:36} {statistics.median(rates[label]):8.0f} {statistics.median(ratios[label]):6.2f}   "
              + " ".join(f"{r:.2f}" for r in ratios[label]))
    if args.round_rate:
        print(f"\np99 at {args.round_rate}/s, one worker, the same rounds (median, then per round, ms):")
        for label in labels:
            print(f"{label:36} {statistics.median(p99s[label]):8.2f}   " + " ".join(f"{p:.2f}" for p in p99s[label]))
    return {label: statistics.median(ratios[label]) for label in labels}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", default="5s")
    parser.add_argument("--rates", default="500,1000,2000")
    parser.add_argument("--sizes", default="small,large")
    parser.add_argument("--workers", default="1,2", help="server processes; with 2 the load shares the cores")
    parser.add_argument("--rounds", type=int, default=0,
                        help="instead of the table: saturation only, one worker, all servers kept running and "
                             "measured in turn for this many rounds; medians of req/s and of per-round ratios")
    parser.add_argument("--round-rate", type=int, default=1000,
                        help="with --rounds: also measure p99 at this fixed rate in every round (0: do not)")
    parser.add_argument("--only", default="", metavar="TEXT,...",
                        help="with --rounds: measure only the servers whose label contains one of these (the baseline "
                             "always), e.g. 'distinct' for more rounds of those rows in the same time")
    parser.add_argument("--compare", type=Path, metavar="DIR",
                        help=f"also run the webhook from the source tree DIR (e.g. `git worktree add DIR <commit>`), "
                             f"labelled '{COMPARE}': a regression check against another version in the same run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wi-bench-") as tmp_name:
        tmp = Path(tmp_name)
        binary = tmp / "loadgen"
        subprocess.run(["go", "build", "-o", str(binary), "."], cwd=ROOT / "bench/loadgen", check=True, timeout=600)
        ca = make_certs(tmp / "certs")
        (tmp / "sa.yaml").write_text(SA)
        env = {**os.environ, "AZURE_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47"}
        servers = SERVERS + (((COMPARE, "burst"), (COMPARE, "distinct")) if args.compare else ())
        if args.rounds:
            interleaved(servers, args, tmp, binary, ca, env)
            return 0
        rows: list[tuple[str, str, str, dict[str, Any]]] = []
        for workers in (int(w) for w in args.workers.split(",")):
            server_cpu, load_cpu = ("0", "1") if workers == 1 else ("0,1", "0,1")
            for size in args.sizes.split(","):
                for name, scenario in servers:
                    if name == "go floor" and workers > 1:
                        continue
                    body = tmp / f"{size}-{scenario}.json"
                    body.write_bytes(review(size, scenario))
                    port = free_port()
                    procs = [subprocess.Popen([*pin(server_cpu), *command], env=env, stdout=subprocess.DEVNULL,
                                              stderr=server_log(tmp), cwd=server_cwd(name, args.compare))
                             for command in server_commands(name, port, workers, tmp, binary)]
                    label = f"{name} x{workers}" + (f" {scenario}" if name.startswith("wi-webhook") else "")
                    try:
                        wait_port(port, procs[0], log=tmp / "servers.log")
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
    print(f"{'pod':6} {'server':32} {'load':11} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
          f"{'errors':>6}")
    for size, name, load, r in rows:
        print(f"{size:6} {name:32} {load:11} {r['per_second']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
              f"{r['p999_ms']:9.2f} {r['errors']:6d}")
    print("\nratio wi-webhook / baseline (throughput):")
    index = {(s, n, load): r for s, n, load, r in rows}
    for size, name, load, r in rows:
        if name.startswith("baseline"):
            workers = name.split()[-1]
            for server in ("wi-webhook", COMPARE):
                for scenario in ("burst", "distinct"):
                    ours = index.get((size, f"{server} {workers} {scenario}", load))
                    if ours:
                        print(f"  {server:18} {workers:3} {size:6} {scenario:9} {load:11} "
                              f"{ours['per_second'] / max(r['per_second'], 1e-9):5.2f}")


if __name__ == "__main__":
    sys.exit(main())
