"""The memory figures behind the chart's default memory limit (charts/workload-identity-webhook/README.md, "Memory").

Not a test: run it by hand after a change that may move memory, and update the README's table.

    .venv/bin/python hack/memory_figures.py [--sizes 0,10000,100000] [--objects 50000]

Each figure is the whole `wi-webhook serve` process (RSS and its peak, VmHWM, from /proc), over TLS on 127.0.0.1:
* cluster mode, its kubeconfig pointing at a stub API server (a thread here) that answers the ServiceAccount and
  Namespace lists as kube-apiserver does (pages of 500, idle watches): idle once ready, for each size;
* on the largest of those: eight concurrent 3 MiB pods (twice), then 2,000 idle TLS connections opened (1,000
  held: the cap);
* `serve --objects` with a file of N ServiceAccounts: time to ready and RSS.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.limits_support import (  # noqa: E402
    account,
    closed_by_server,
    concurrent_posts,
    large_pod,
    memory_kb,
    open_idle,
    review,
    stub_api_server,
    stub_kubeconfig,
)
from tests.processes import WebhookProcess  # noqa: E402

CLIENT_ID = "azure.workload.identity/client-id"
TENANT = {"AZURE_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47"}


def mb(kb: int) -> str:
    return f"{kb / 1024:.0f} MB"


def cluster_mode(size: int, tmp: Path, load: bool) -> None:
    api = stub_api_server(size)
    kubeconfig = stub_kubeconfig(tmp / f"kubeconfig-{size}", api)
    workdir = tmp / f"cluster-{size}"
    workdir.mkdir()
    started = time.monotonic()
    server = WebhookProcess(workdir, ["--kubeconfig", str(kubeconfig), "--disable-cert-rotation",
                                      "--native-sidecar", "true"], env=TENANT)
    try:
        server.wait_ready(600)
        ready = time.monotonic() - started
        time.sleep(2)
        idle = memory_kb(server.proc.pid)
        print(f"cluster mode, {size:>6} ServiceAccounts: ready in {ready:.1f} s, idle RSS {mb(idle['VmRSS'])} "
              f"(peak {mb(idle['VmHWM'])})", flush=True)
        if not load:
            return
        body = review(namespace="team-1", obj=large_pod())
        statuses = concurrent_posts(server, [body] * 8) + concurrent_posts(server, [body] * 8)
        after = memory_kb(server.proc.pid)
        print(f"  8 concurrent 3 MiB pods (x2, statuses {sorted(set(statuses))}): peak {mb(after['VmHWM'])}, "
              f"after {mb(after['VmRSS'])}", flush=True)
        held = open_idle(server, 2000)
        time.sleep(1)
        with_idle = memory_kb(server.proc.pid)
        still_open = sum(not closed_by_server(sock, 0.001) for sock in held)
        print(f"  2,000 idle TLS connections opened, {still_open} held (the cap): RSS {mb(with_idle['VmRSS'])} "
              f"(peak {mb(with_idle['VmHWM'])})", flush=True)
        for sock in held:
            sock.close()
        time.sleep(3)
        print(f"  after closing them: RSS {mb(memory_kb(server.proc.pid)['VmRSS'])}", flush=True)
    finally:
        server.stop()
        api.shutdown()


def objects_mode(size: int, tmp: Path) -> None:
    path = tmp / f"objects-{size}.yaml"
    with path.open("w") as out:
        for index in range(size):
            meta = account(index)["metadata"]
            out.write(f"---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {meta['name']}\n"
                      f"  namespace: {meta['namespace']}\n  annotations:\n"
                      f"    {CLIENT_ID}: \"{meta['annotations'][CLIENT_ID]}\"\n")
    workdir = tmp / f"objects-{size}"
    workdir.mkdir()
    started = time.monotonic()
    server = WebhookProcess(workdir, ["--objects", str(path)], env=TENANT)
    try:
        server.wait_ready(600)
        ready = time.monotonic() - started
        time.sleep(1)
        figures = memory_kb(server.proc.pid)
        print(f"--objects, {size} ServiceAccounts: ready in {ready:.1f} s, RSS {mb(figures['VmRSS'])} "
              f"(peak {mb(figures['VmHWM'])})", flush=True)
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="0,10000,100000", help="ServiceAccounts in cluster mode (comma-separated)")
    parser.add_argument("--objects", type=int, default=50_000, help="ServiceAccounts for serve --objects (0: skip)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",") if size]
    with tempfile.TemporaryDirectory(prefix="wi-memory-") as tmp:
        for size in sizes:
            cluster_mode(size, Path(tmp), load=size == max(sizes))
        if args.objects:
            objects_mode(args.objects, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
