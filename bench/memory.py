"""Memory and startup of the ServiceAccount cache (not a test).

Two parts:
1. Real: starts the test kube-apiserver (tests/e2e/cluster.py), creates N ServiceAccounts in it (realistic: the
   client-id annotation plus unrelated annotations and labels), starts `wi-webhook serve` against it and reports
   the time from process start to /readyz ok (certificates loaded, cache synced) and the RSS once ready.
   Creating ServiceAccounts through this 2-core API server runs at ~170/s, so the default stops at 10k.
2. Fed: in a fresh process with the server's imports, the cache's own list code (`_list`, pages of 500 raw JSON
   objects, exactly what the API server returns) is fed N ServiceAccounts; reports list time and RSS for
   0, 10k and 100k.
3. Served: the whole `wi-webhook serve` process, with its kubeconfig pointing at a stub API server on 127.0.0.1
   that answers the ServiceAccount and Namespace lists with the same paged JSON (and idle watches): start to
   /readyz and RSS for 0, 10k and 100k, in seconds instead of the real API server's ~10 minutes per 100k.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kubernetes import client  # noqa: E402

from bench.objects import service_accounts  # noqa: E402
from tests.e2e.cluster import TestCluster  # noqa: E402
from tests.limits_support import stub_api_server, stub_kubeconfig  # noqa: E402
from tests.processes import WebhookProcess  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def create_service_accounts(api: client.ApiClient, namespace: str, start: int, count: int) -> None:
    core = client.CoreV1Api(api)

    def one(index: int) -> None:
        core.create_namespaced_service_account(namespace, {"metadata": {
            "name": f"sa-{index:06d}",
            "labels": {"app.kubernetes.io/name": f"app-{index}", "team": "payments"},
            "annotations": {"azure.workload.identity/client-id": f"00000000-0000-0000-0000-{index:012d}",
                            "kubectl.kubernetes.io/last-applied-configuration": "x" * 300,
                            "example.com/owner": "team-payments"}}}, _preload_content=False)

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(one, range(start, start + count)))


FED = r"""
import gc, sys, time, orjson
sys.path.insert(0, ROOT)
import webhook.serving.server, webhook.cli.main, kubernetes.client  # the server's imports, for a comparable baseline
from webhook.serving.metrics import Metrics
from webhook.sources.serviceaccounts import _ServiceAccountCache
from bench.objects import service_accounts

class Page:
    def __init__(self, data): self.data = data

def pages(total):
    for start in range(0, max(total, 1), 500):
        items = service_accounts(start, min(start + 500, total))
        more = start + 500 < total
        yield orjson.dumps({"items": items, "metadata": {"resourceVersion": "1", "continue": "c" if more else ""}})

def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")) / 1024

class Fed(_ServiceAccountCache):
    def __init__(self, total):
        self._pages = pages(total)
        self._metrics = Metrics()
        from webhook.sources.cache import ListWatchCache
        ListWatchCache.__init__(self)
    def _list_call(self, **kwargs):
        return Page(next(self._pages))

total = int(sys.argv[1])
gc.collect()
cache = Fed(total)
started = time.perf_counter()
cache._list()
seconds = time.perf_counter() - started
gc.collect()
print(f"{total} {len(cache)} {seconds:.2f} {rss():.1f}")
"""


def served(size: int, tmp: Path) -> tuple[float, float]:
    server = stub_api_server(size, service_accounts)
    try:
        kubeconfig = stub_kubeconfig(tmp / f"stub-{size}.kubeconfig", server)
        workdir = tmp / f"served-{size}"
        workdir.mkdir()
        started = time.monotonic()
        webhook = WebhookProcess(workdir, ["--kubeconfig", str(kubeconfig), "--disable-cert-rotation",
                                           "--native-sidecar", "true"],
                                 env={"AZURE_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47"})
        try:
            webhook.wait_ready(300)
            ready = time.monotonic() - started
            time.sleep(2)
            return ready, rss_mb(webhook.proc.pid)
        finally:
            webhook.stop()
    finally:
        server.shutdown()


def fed(size: int) -> tuple[float, float]:
    import subprocess

    out = subprocess.run([sys.executable, "-c", f"ROOT = {str(ROOT)!r}\n" + FED, str(size)], capture_output=True,
                         text=True, timeout=600, check=True).stdout.split()
    assert int(out[1]) == size, out
    return float(out[2]), float(out[3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="0,10000", help="ServiceAccounts created in the real API server")
    parser.add_argument("--fed-sizes", default="0,10000,100000", help="ServiceAccounts fed to the cache code")
    parser.add_argument("--served-sizes", default="0,10000,100000",
                        help="ServiceAccounts listed by a whole serve process from a stub API server")
    args = parser.parse_args()
    print(f"{'fed ServiceAccounts':>19} {'list s':>7} {'RSS MB':>7}")
    for size in (int(s) for s in args.fed_sizes.split(",") if s):
        seconds, rss = fed(size)
        print(f"{size:>19} {seconds:>7.2f} {rss:>7.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="wi-mem-served-") as tmp:
        print(f"{'served ServiceAccounts':>22} {'ready s':>8} {'RSS MB':>7}")
        for size in (int(s) for s in args.served_sizes.split(",") if s):
            ready, rss = served(size, Path(tmp))
            print(f"{size:>22} {ready:>8.2f} {rss:>7.1f}", flush=True)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if not sizes:
        return 0
    with tempfile.TemporaryDirectory(prefix="wi-mem-") as tmp:
        cluster = TestCluster.start(Path(tmp) / "cluster")
        try:
            api = cluster.api_client()
            client.CoreV1Api(api).create_namespace({"metadata": {"name": "bench"}})
            created = 0
            print(f"{'ServiceAccounts':>15} {'create s':>9} {'ready s':>8} {'RSS MB':>7}")
            for size in sizes:
                started = time.monotonic()
                create_service_accounts(api, "bench", created, size - created)
                create_seconds = time.monotonic() - started
                created = size
                workdir = Path(tmp) / f"webhook-{size}"
                workdir.mkdir()
                started = time.monotonic()
                webhook = WebhookProcess(workdir, ["--kubeconfig", str(cluster.kubeconfig), "--disable-cert-rotation"],
                                         env={"AZURE_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47"})
                try:
                    webhook.wait_ready(600)
                    ready = time.monotonic() - started
                    time.sleep(1)
                    print(f"{size:>15} {create_seconds:>9.1f} {ready:>8.2f} {rss_mb(webhook.proc.pid):>7.1f}",
                          flush=True)
                finally:
                    webhook.stop()
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
