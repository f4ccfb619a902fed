"""Prometheus metrics: ours, plus the reference's `azwi_mutation_request` histogram for existing dashboards.

The per-review series (the request counter, both latency histograms, the ServiceAccount lookup and remembered
decision counters) are kept as plain numbers by serving/stats.py and exported by `AdmissionCollector`; the rest are
prometheus-client metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from webhook.serving.stats import REFERENCE_BUCKETS, AdmissionStats, Tally

REQUESTS_HELP = ("Admission reviews answered, by decision (mutated, skipped, denied, error) and request "
                 "namespace.")
DURATION_HELP = "Time to answer an admission review."
REFERENCE_HELP = "Reference-compatible mutation latency (seconds) by namespace."
_LE = [floatToGoString(bound) for bound in REFERENCE_BUCKETS] + ["+Inf"]  # type: ignore[no-untyped-call]
SA_LOOKUPS = "wi_webhook_serviceaccount_lookups"
# The counters kept in AdmissionStats.counters: name -> (help, label name).
COUNTERS = {
    SA_LOOKUPS: ("ServiceAccount lookups by where the answer came from (cache, live, missing, error).", "source"),
}


class AdmissionCollector(Collector):
    """`wi_webhook_admission_requests_total`, `wi_webhook_admission_duration_seconds` and the reference's
    `azwi_mutation_request{namespace, service_name="webhook"}`, from AdmissionStats at scrape time."""

    def __init__(self, stats: Callable[[], AdmissionStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        requests = CounterMetricFamily("wi_webhook_admission_requests", REQUESTS_HELP, labels=["decision", "namespace"])
        overall = [0] * len(_LE)
        overall_seconds = 0.0
        by_namespace: dict[str, tuple[list[int], list[float]]] = {}
        for (decision, namespace), series in sorted(stats.series.items()):
            requests.add_metric([decision, namespace], series.count)
            if not any(series.buckets):
                continue  # counted, never timed (a 400)
            buckets, seconds = by_namespace.setdefault(namespace, ([0] * len(_LE), [0.0]))
            for index, value in enumerate(series.buckets):
                buckets[index] += value
                overall[index] += value
            seconds[0] += series.seconds
            overall_seconds += series.seconds
        duration = HistogramMetricFamily("wi_webhook_admission_duration_seconds", DURATION_HELP)
        duration.add_metric([], _cumulative(overall), overall_seconds)
        reference = HistogramMetricFamily("azwi_mutation_request", REFERENCE_HELP, labels=["namespace", "service_name"])
        for namespace, (buckets, seconds) in by_namespace.items():
            reference.add_metric([namespace, "webhook"], _cumulative(buckets), seconds[0])
        yield requests
        yield duration
        yield reference
        for name, (help_text, label_name) in COUNTERS.items():
            family = CounterMetricFamily(name, help_text, labels=[label_name])
            for (counter, label), tally in sorted(stats.counters.items()):
                if counter == name:
                    family.add_metric([label], tally.value)
            yield family


def _cumulative(buckets: list[int]) -> list[tuple[str, float]]:
    out, running = [], 0
    for le, value in zip(_LE, buckets, strict=True):
        running += value
        out.append((le, float(running)))
    return out


class Metrics:
    """All metrics of one process, in their own registry (tests create as many as they like)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.admission = AdmissionStats()
        self.registry.register(AdmissionCollector(lambda: self.admission))
        self.sa_lookups_cached = self.sa_lookup("cache")  # per review: look the child up once
        # With --workers, each worker has its own cache: report the largest, and synced only if all are.
        self.cache_size = Gauge("wi_webhook_serviceaccount_cache_size", "ServiceAccounts held in the cache.",
                                registry=self.registry, multiprocess_mode="livemax")
        self.cache_synced = Gauge("wi_webhook_serviceaccount_cache_synced",
                                  "1 when the ServiceAccount cache has listed successfully and is watching.",
                                  registry=self.registry, multiprocess_mode="livemin")
        self.watch_errors = Counter("wi_webhook_serviceaccount_watch_errors",
                                    "Failed list/watch calls against the API server.", registry=self.registry)
        self.findings = Counter("wi_webhook_policy_findings", "Policy findings by rule and mode.",
                                ["rule", "mode"], registry=self.registry)
        self.cert_reloads = Counter("wi_webhook_certificate_reloads", "Serving certificate (re)loads.",
                                    ["result"], registry=self.registry)

    def sa_lookup(self, source: str) -> Tally:
        """`wi_webhook_serviceaccount_lookups_total{source}`: cache, live, missing or error."""
        return self.admission.counter(SA_LOOKUPS, source)
