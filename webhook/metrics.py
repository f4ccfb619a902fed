"""Prometheus metrics: ours, plus the reference's `azwi_mutation_request` histogram for existing dashboards."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# The reference's buckets (seconds): 1-10 ms by 1 ms, 20-100 ms by 10 ms, 0.2-1 s by 0.1 s, then 1.5, 2, 2.5, 3.
REFERENCE_BUCKETS = (
    *(i / 1000 for i in range(1, 11)),
    *(i / 100 for i in range(2, 11)),
    *(i / 10 for i in range(2, 11)),
    1.5, 2.0, 2.5, 3.0,
)


class Metrics:
    """All metrics of one process, in their own registry (tests create as many as they like)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "wi_webhook_admission_requests", "Admission reviews answered, by decision (mutated, unchanged, "
            "denied, error) and request namespace.", ["decision", "namespace"], registry=self.registry)
        self.duration = Histogram(
            "wi_webhook_admission_duration_seconds", "Time to answer an admission review.",
            buckets=REFERENCE_BUCKETS, registry=self.registry)
        self.reference_duration = Histogram(
            "azwi_mutation_request", "Reference-compatible mutation latency (seconds) by namespace.",
            ["namespace", "service_name"], buckets=REFERENCE_BUCKETS, registry=self.registry)
        self.sa_lookups = Counter(
            "wi_webhook_serviceaccount_lookups", "ServiceAccount lookups by where the answer came from "
            "(cache, live, missing, error).", ["source"], registry=self.registry)
        # With --workers, each worker has its own cache: report the largest, and synced only if all are.
        self.cache_size = Gauge("wi_webhook_serviceaccount_cache_size", "ServiceAccounts held in the cache.",
                                registry=self.registry, multiprocess_mode="livemax")
        self.cache_synced = Gauge("wi_webhook_serviceaccount_cache_synced",
                                  "1 when the ServiceAccount cache has listed successfully and is watching.",
                                  registry=self.registry, multiprocess_mode="livemin")
        self.watch_errors = Counter("wi_webhook_serviceaccount_watch_errors",
                                    "Failed list/watch calls against the API server.", registry=self.registry)
        self.decision_cache = Counter(
            "wi_webhook_decision_cache", "Reviews answered from a remembered decision for an identical pod (hit) "
            "or computed and remembered (miss).", ["result"], registry=self.registry)
        self.findings = Counter("wi_webhook_policy_findings", "Policy findings by rule and mode.",
                                ["rule", "mode"], registry=self.registry)
        self.cert_reloads = Counter("wi_webhook_certificate_reloads", "Serving certificate (re)loads.",
                                    ["result"], registry=self.registry)
