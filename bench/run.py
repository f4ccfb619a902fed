"""Benchmark `/mutate-v1-pod` against a bare aiohttp+orjson baseline measured in the same run.

Builds the Go load generator (bench/loadgen, stdlib only), starts each server pinned to CPU 0 (taskset) and
drives it from CPU 1 over TLS keep-alive: saturation throughput, latency percentiles at fixed rates (open loop,
measured from dispatch, including any wait for a free connection), and new-connection handshakes/s. Pods are a
small (~4 KB) and a large (~200 KB) realistic one, each as a burst of identical pods (a Deployment scale-up) and
as distinct pods (every decision computed). A Go server with a fixed answer shows the harness's own floor.
With --compiled, the wi-webhook rows are also run from the mypyc-compiled build ("wi-webhook compiled"): the wheel
of tests/compiled.py (built with this environment's mypy, about 80 s, or taken from its cache), installed into an
isolated venv whose compiled modules (the list in pyproject.toml) are checked to be extension modules before
anything is measured.
Prints a table and the ratio ours/baseline. Not a test: nothing is asserted.
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

from tests.compiled import compiled_modules, compiled_wheel, is_extension, isolated_python, probe  # noqa: E402
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


def server_commands(name: str, port: int, workers: int, tmp: Path, binary: Path,
                    compiled: Path | None = None) -> list[list[str]]:
    if name == "go floor":  # the harness floor: a Go server with a fixed answer
        return [[str(binary), "-serve", f"127.0.0.1:{port}", "-cert-dir", str(tmp / "certs")]]
    if name.startswith(HANDLER_PROBE):  # the baseline's server calling the webhook's handler (compiled if built)
        python = compiled / "bin" / "python" if compiled else Path(sys.executable)
        return [[str(python), str(ROOT / "bench/baseline.py"), "--port", str(port), "--cert-dir", str(tmp / "certs"),
                 "--handler-calls", name.split()[-1].rstrip("x"), "--objects", str(tmp / "sa.yaml")]]
    if name.startswith("baseline"):  # N bare processes sharing the port, like `--workers N`
        return [[sys.executable, str(ROOT / "bench/baseline.py"), "--port", str(port), "--cert-dir",
                 str(tmp / "certs"), *(["--reuse-port"] if workers > 1 else []),
                 *(["--patch-bytes", name.split()[-1]] if name.startswith(REPLY_CONTROL) else [])]
                for _ in range(workers)]
    # wi-webhook from the sources (this environment), or the compiled build's console script (its own venv).
    if name == COMPILED:
        assert compiled, "the compiled build is installed first"
        start = [str(compiled / "bin" / "wi-webhook")]
    else:
        start = [sys.executable, "-m", "webhook.cli"]
    return [[*start, "serve", "--host", "127.0.0.1", "--port", str(port),
             "--health-addr", f"127.0.0.1:{free_port()}", "--metrics-addr", f"127.0.0.1:{free_port()}",
             "--webhook-cert-dir", str(tmp / "certs"), "--objects", str(tmp / "sa.yaml"),
             "--workers", str(workers)]]


def loadgen(binary: Path, url: str, body: Path, ca: Path, args: list[str], cpu: str = "1") -> dict[str, Any]:
    out = subprocess.run([*pin(cpu), str(binary), "-url", url, "-body", str(body), "-ca", str(ca), *args],
                         capture_output=True, text=True, timeout=300, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


SERVERS = (("go floor", "burst"), ("baseline", "burst"), ("wi-webhook", "burst"), ("wi-webhook", "distinct"))
COMPILED = "wi-webhook compiled"
REPLY_CONTROL = "baseline patch"  # with --reply-control N: the baseline answering with an N-byte patch
HANDLER_PROBE = "baseline calling handler"  # with --handler-probe N: the baseline's server calling our handler


def compiled_venv(tmp: Path) -> Path:
    """The compiled build installed in isolation under tmp; fails unless its hot-path modules are extensions."""
    wheel, built = compiled_wheel()
    venv = tmp / "compiled-venv"
    python = isolated_python(wheel, venv)
    found = probe(python, tmp)
    files = found["files"]
    stray = {name: file for name, file in files.items()
             if not Path(file).resolve().is_relative_to(venv.resolve())
             or (name in compiled_modules() and not is_extension(file))}
    if stray:
        raise SystemExit(f"the compiled build does not import as expected: {stray}")
    print(f"{COMPILED}: {wheel.name} ({'built' if built else 'cached'}), "
          + ", ".join(Path(files[m]).name for m in compiled_modules()), file=sys.stderr)
    return venv


def interleaved(servers: tuple[tuple[str, str], ...], args: argparse.Namespace, tmp: Path, binary: Path, ca: Path,
                env: dict[str, str], compiled: Path | None) -> int:
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
                if name == "go floor" or (not name.startswith("baseline") and args.only
                                          and not any(part in label for part in args.only.split(","))):
                    continue
                body = tmp / f"{size}-{scenario}.json"
                body.write_bytes(review(size, scenario))
                port = free_port()
                [command] = server_commands(name, port, 1, tmp, binary, compiled)
                procs.append(subprocess.Popen([*pin("0"), *command], env=env, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL,
                                              cwd=tmp if name == COMPILED or name.startswith(HANDLER_PROBE) else None))
                wait_port(port, procs[-1])
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
    return 0


def instructions(servers: tuple[tuple[str, str], ...], args: argparse.Namespace, tmp: Path, binary: Path, ca: Path,
                 env: dict[str, str], compiled: Path | None) -> int:
    """CPU work per review, counted instead of timed: each server runs under valgrind's callgrind twice, answering
    a fifth of --instructions reviews and then all of them, sent one after another on one keep-alive TLS
    connection; the difference in instructions executed, divided by the difference in reviews, is the server's
    whole per-review work (TLS, HTTP, the event loop, the handler), start-up cancelled out. Unlike req/s on a
    shared host this does not drift from run to run (about 1%), so it shows what a change to the code did."""
    import http.client
    import random
    import ssl
    import uuid

    if not shutil.which("valgrind"):
        print("--instructions needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    context = ssl.create_default_context(cafile=str(ca))

    def count(command: list[str], body: bytes, reviews: int, name: str) -> int:
        out = tmp / "callgrind.out"
        port = int(command[command.index("--port") + 1])
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp if name == COMPILED
                                else None)
        try:
            wait_port(port, proc, timeout=300)
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=120)
            for seq in range(reviews):
                filled = (body.replace(b"{{uid}}", str(uuid.uuid4()).encode()).replace(b"{{seq}}", str(seq).encode())
                          .replace(b"{{rand5}}", "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5)).encode()))
                conn.request("POST", "/mutate-v1-pod", body=filled, headers={"Content-Type": "application/json"})
                answer = conn.getresponse()
                answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"{name}: HTTP {answer.status}")
            conn.close()
        finally:
            proc.terminate()
            proc.wait(300)
        totals = [line for line in out.read_text().splitlines() if line.startswith(("summary:", "totals:"))]
        return int(totals[-1].split()[1])

    per_review: dict[str, float] = {}
    first = max(args.instructions // 5, 1)
    for size in args.sizes.split(","):
        for name, scenario in servers:
            if name == "go floor":
                continue
            body = review(size, scenario)
            [command] = server_commands(name, free_port(), 1, tmp, binary, compiled)
            label = f"{size} {name}" + (f" {scenario}" if name.startswith("wi-webhook") else "")
            few = count(command, body, first, name)
            [command] = server_commands(name, free_port(), 1, tmp, binary, compiled)
            many = count(command, body, args.instructions, name)
            per_review[label] = (many - few) / (args.instructions - first)
            print(f"  {label}: {per_review[label] / 1000:.0f}k", file=sys.stderr)
    print(f"instructions per review (callgrind, whole server process, {args.instructions} - {first} reviews, "
          "one keep-alive connection):")
    print(f"{'server':36} {'instructions':>12} {'baseline/ours':>14}")
    for label, value in per_review.items():
        baseline = per_review[f"{label.split()[0]} baseline"]
        print(f"{label:36} {value / 1000:11.0f}k {baseline / value:14.2f}")
    return 0


def in_process(args: argparse.Namespace, tmp: Path, env: dict[str, str], compiled: Path | None) -> int:
    """The handler's own cost per review, without TLS, HTTP or the event loop (bench/inprocess.py), next to the
    baseline handler's work on the same reviews, from the sources and (with --compiled) from the compiled build."""
    pythons = [("wi-webhook", Path(sys.executable))] + ([(COMPILED, compiled / "bin" / "python")] if compiled else [])
    print(f"in process, per review (fastest of {args.in_process_blocks} blocks, median of the per-block ratios; "
          "baseline = decode + encode an allow):")
    print(f"{'server':36} {'baseline us':>11} {'handler us':>11} {'handler/baseline':>16} {'reply bytes':>12}")
    for size in args.sizes.split(","):
        for scenario in ("burst", "distinct"):
            body = tmp / f"{size}-{scenario}.json"
            body.write_bytes(review(size, scenario))
            for name, python in pythons:
                # Started in tmp, with the script by path: the compiled build must not be shadowed by a checkout.
                out = subprocess.run([str(python), str(ROOT / "bench/inprocess.py"), "--body", str(body), "--objects",
                                      str(tmp / "sa.yaml"), "--blocks", str(args.in_process_blocks)],
                                     env=env, cwd=tmp, capture_output=True, text=True, timeout=600, check=True)
                r = json.loads(out.stdout)
                print(f"{size + ' ' + name + ' ' + scenario:36} {r['baseline_us']:11.1f} {r['handler_us']:11.1f} "
                      f"{r['ratio']:16.2f} {r['reply_bytes']:12d}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", default="5s")
    parser.add_argument("--rates", default="500,1000,2000")
    parser.add_argument("--sizes", default="small,large")
    parser.add_argument("--workers", default="1,2", help="server processes; with 2 the load shares the cores")
    parser.add_argument("--compiled", action="store_true",
                        help=f"also run the wi-webhook rows from the mypyc-compiled build, labelled '{COMPILED}'")
    parser.add_argument("--rounds", type=int, default=0,
                        help="instead of the table: saturation only, one worker, all servers kept running and "
                             "measured in turn for this many rounds; medians of req/s and of per-round ratios")
    parser.add_argument("--round-rate", type=int, default=1000,
                        help="with --rounds: also measure p99 at this fixed rate in every round (0: do not)")
    parser.add_argument("--only", default="", metavar="TEXT,...",
                        help="with --rounds: measure only the servers whose label contains one of these (the baseline "
                             "always), e.g. 'compiled distinct' for more rounds of one row in the same time")
    parser.add_argument("--reply-control", type=int, default=0, metavar="BYTES",
                        help="with --rounds: also run the baseline answering with a fixed patch of about BYTES base64 "
                             "bytes (the webhook's small-pod reply carries about 3,900), to tell the cost of a larger "
                             "reply from the cost of computing it")
    parser.add_argument("--handler-probe", type=int, default=0, metavar="N",
                        help="with --rounds: also run the baseline's own server answering with the webhook's handler "
                             "(the compiled build's with --compiled), called 1..N times per request on distinct pods: "
                             "what the handler costs where it runs, and what each further call costs")
    parser.add_argument("--in-process", action="store_true",
                        help="instead of the table: the handler's own cost per review in process (no TLS, HTTP or "
                             "event loop) next to the baseline handler's work (bench/inprocess.py)")
    parser.add_argument("--in-process-blocks", type=int, default=15, help=argparse.SUPPRESS)
    parser.add_argument("--instructions", type=int, default=0, metavar="N",
                        help="instead of the table: instructions per review under callgrind (needs valgrind), from "
                             "N and N/5 reviews; the ratio baseline/ours is what saturation would show on a quiet "
                             "core")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wi-bench-") as tmp_name:
        tmp = Path(tmp_name)
        binary = tmp / "loadgen"
        subprocess.run(["go", "build", "-o", str(binary), "."], cwd=ROOT / "bench/loadgen", check=True, timeout=600)
        ca = make_certs(tmp / "certs")
        (tmp / "sa.yaml").write_text(SA)
        env = {**os.environ, "AZURE_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47"}
        compiled = compiled_venv(tmp) if args.compiled else None
        servers = SERVERS + (((COMPILED, "burst"), (COMPILED, "distinct")) if compiled else ())
        if args.reply_control and args.rounds:
            servers += ((f"{REPLY_CONTROL} {args.reply_control}", "burst"),)
        if args.handler_probe and args.rounds:
            servers += tuple((f"{HANDLER_PROBE} {calls}x", "distinct") for calls in range(1, args.handler_probe + 1))
        if args.in_process:
            return in_process(args, tmp, env, compiled)
        if args.instructions:
            return instructions(servers, args, tmp, binary, ca, env, compiled)
        if args.rounds:
            return interleaved(servers, args, tmp, binary, ca, env, compiled)
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
                    # Started in tmp: a checkout in the working directory must not shadow the compiled build.
                    procs = [subprocess.Popen([*pin(server_cpu), *command], env=env, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL, cwd=tmp if name == COMPILED else None)
                             for command in server_commands(name, port, workers, tmp, binary, compiled)]
                    label = f"{name} x{workers}" + (f" {scenario}" if name.startswith("wi-webhook") else "")
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
            for scenario in ("burst", "distinct"):
                ours = index.get((size, f"wi-webhook {workers} {scenario}", load))
                if ours:
                    print(f"  {workers:3} {size:6} {scenario:9} {load:11} "
                          f"{ours['per_second'] / max(r['per_second'], 1e-9):5.2f}")
    compiled = [(size, name, load, r) for size, name, load, r in rows if name.startswith(COMPILED)]
    if compiled:
        print(f"\nratio {COMPILED} / baseline and / wi-webhook from the sources (throughput):")
        for size, name, load, r in compiled:
            workers, scenario = name.split()[2:4]
            print(f"  {workers:3} {size:6} {scenario:9} {load:11} "
                  f"{ratio(r, index.get((size, f'baseline {workers}', load)))} "
                  f"{ratio(r, index.get((size, f'wi-webhook {workers} {scenario}', load)))}")


def ratio(ours: dict[str, Any], theirs: dict[str, Any] | None) -> str:
    return f"{ours['per_second'] / max(theirs['per_second'], 1e-9):5.2f}" if theirs else "  n/a"


if __name__ == "__main__":
    sys.exit(main())
