"""The ServiceAccounts bench/memory.py feeds to the cache, as kube-apiserver lists them (no heavy imports: the fed
measurement runs this in a fresh process whose memory is the figure)."""

from __future__ import annotations

from typing import Any


def service_accounts(start: int, stop: int) -> list[dict[str, Any]]:
    """ServiceAccounts sa-<start>..sa-<stop-1> over 300 namespaces: a client-id annotation plus unrelated
    annotations and labels, as in a real cluster."""
    return [{"metadata": {"name": f"sa-{i:06d}", "namespace": f"team-{i % 300}", "resourceVersion": str(10**6 + i),
                          "uid": f"00000000-0000-0000-0001-{i:012d}", "creationTimestamp": "2026-11-27T00:00:00Z",
                          "labels": {"app.kubernetes.io/name": f"app-{i}", "team": "payments"},
                          "annotations": {"azure.workload.identity/client-id": f"00000000-0000-0000-0000-{i:012d}",
                                          "kubectl.kubernetes.io/last-applied-configuration": "x" * 300}}}
            for i in range(start, stop)]
