"""Prometheus metrics: ours, plus the reference's `azwi_mutation_request` histogram for existing dashboards.

The per-review series (the request counter, both latency histograms, the ServiceAccount lookup counter) are plain
numbers (`AdmissionStats`), turned into metric families at scrape time by `AdmissionCollector`; the rest are
prometheus-client metrics. Why not prometheus-client's Counter and Histogram for those: each `inc`/`observe` takes a
lock, and under `--workers` goes through its multiprocess files; the event loop is the only writer here, and the
plain numbers are also what a worker hands to the supervisor.

With `serve --workers N`, each worker writes its numbers to a file about once a second (see
`serving.health.write_worker_state`) and the supervisor adds the files up when scraped, so its figures may lag by
up to a second and a worker that is killed loses at most its last second. Files of exited workers are kept, so the
totals never go down.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from webhook.serving.limits import MAX_METRIC_NAMESPACES, OTHER_NAMESPACE

# The reference's buckets (seconds): 1-10 ms by 1 ms, 20-100 ms by 10 ms, 0.2-1 s by 0.1 s, then 1.5, 2, 2.5, 3.
REFERENCE_BUCKETS: tuple[float, ...] = (
    *(i / 1000 for i in range(1, 11)),
    *(i / 100 for i in range(2, 11)),
    *(i / 10 for i in range(2, 11)),
    1.5, 2.0, 2.5, 3.0,
)


class AdmissionSeries:
    """One (decision, namespace) series: how many reviews, and for answered ones the latency histogram."""

    __slots__ = ("buckets", "count", "seconds")

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        # buckets[i] counts observations in (REFERENCE_BUCKETS[i-1], REFERENCE_BUCKETS[i]]; the last one is +Inf.
        self.buckets = [0] * (len(REFERENCE_BUCKETS) + 1)

    def observe(self, elapsed: float) -> None:
        """One answered review that took `elapsed` seconds."""
        self.count += 1
        self.seconds += elapsed
        self.buckets[bisect_left(REFERENCE_BUCKETS, elapsed)] += 1

    def tally(self) -> None:
        """One review answered with an error (a 400, or an internal error): counted, not timed."""
        self.count += 1


class Tally:
    """One labelled child of a counter (what prometheus-client's `counter.labels(value)` returns): a plain number."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1


class AdmissionStats:
    """All per-review numbers of one process (or, merged, of all workers); written only from the event loop.

    At most `max_namespaces` request namespaces get series of their own; reviews from any later one are counted
    under namespace="_other". Why: the namespace comes from the caller, and each one adds about 3 KB of series for
    the life of the process and to every scrape (20k namespaces added 63 MB). A cluster with more namespaces than
    the cap still has exact totals, and the first namespaces seen keep their detail.
    """

    def __init__(self, max_namespaces: int = MAX_METRIC_NAMESPACES) -> None:
        self.series: dict[tuple[str, str], AdmissionSeries] = {}
        self.counters: dict[tuple[str, str], Tally] = {}  # (counter name, label value)
        self.max_namespaces = max_namespaces
        self.namespaces: set[str] = set()

    def of(self, decision: str, namespace: str) -> AdmissionSeries:
        key = (decision, namespace)
        series = self.series.get(key)
        if series is None:
            if namespace not in self.namespaces:
                if len(self.namespaces) >= self.max_namespaces and namespace != OTHER_NAMESPACE:
                    return self.of(decision, OTHER_NAMESPACE)
                self.namespaces.add(namespace)
            series = self.series[key] = AdmissionSeries()
        return series

    def counter(self, name: str, label: str) -> Tally:
        """The child `label` of counter `name` (made at 0 on first use, and then exported, like a prometheus
        child)."""
        key = (name, label)
        tally = self.counters.get(key)
        if tally is None:
            tally = self.counters[key] = Tally()
        return tally

    def to_json(self) -> bytes:
        return orjson.dumps({"series": [[decision, namespace, s.count, s.seconds, s.buckets]
                                        for (decision, namespace), s in self.series.items()],
                             "counters": [[name, label, t.value] for (name, label), t in self.counters.items()]})

    def add(self, snapshot: bytes) -> None:
        """Add another process's `to_json` snapshot (a worker's, in the supervisor). ValueError when it is not one;
        nothing is added then."""
        size = len(REFERENCE_BUCKETS) + 1
        try:
            parsed = orjson.loads(snapshot)
            if not isinstance(parsed, dict):
                raise TypeError(f"expected an object, got {type(parsed).__name__}")
            rows = [(str(decision), str(namespace), int(count), float(seconds), [int(value) for value in buckets])
                    for decision, namespace, count, seconds, buckets in parsed["series"]]
            counts = [(str(name), str(label), int(value)) for name, label, value in parsed["counters"]]
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError('not a worker snapshot ({"series": [[decision, namespace, count, seconds, buckets], '
                             f'...], "counters": [[name, label, value], ...]}}): {exc!r}') from None
        if any(len(buckets) != size for *_, buckets in rows):
            raise ValueError(f"a histogram does not have the {size} buckets of this version")
        for decision, namespace, count, seconds, buckets in rows:
            series = self.of(decision, namespace)
            series.count += count
            series.seconds += seconds
            for index, value in enumerate(buckets):
                series.buckets[index] += value
        for name, label, value in counts:
            self.counter(name, label).value += value


REQUESTS_HELP = ("Admission reviews answered, by decision (mutated, skipped, denied, error) and request "
                 "namespace.")
DURATION_HELP = "Time to answer an admission review."
REFERENCE_HELP = "Reference-compatible mutation latency (seconds) by namespace."
_LE = [floatToGoString(bound) for bound in REFERENCE_BUCKETS] + ["+Inf"]  # type: ignore[no-untyped-call]
SA_LOOKUPS = "wi_webhook_serviceaccount_lookups"
DRY_RUNS = "wi_webhook_admission_dry_runs"
# The counters kept in AdmissionStats.counters: name -> (help, label name).
COUNTERS = {
    SA_LOOKUPS: ("ServiceAccount lookups by where the answer came from (cache, live, missing, error).", "source"),
    DRY_RUNS: ("Admission reviews of dry-run requests (kubectl --dry-run=server), by decision; also counted in "
               "wi_webhook_admission_requests_total. Nothing is stored for them.", "decision"),
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
        self.sa_lookup("cache")  # exported at 0 from the start, as prometheus-client's child was
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

    def dry_run(self, decision: str) -> Tally:
        """`wi_webhook_admission_dry_runs_total{decision}`: a review of a dry-run request."""
        return self.admission.counter(DRY_RUNS, decision)

    def sa_lookup(self, source: str) -> Tally:
        """`wi_webhook_serviceaccount_lookups_total{source}`: cache, live, missing or error."""
        return self.admission.counter(SA_LOOKUPS, source)
