"""The per-review metrics as plain numbers: the request counter, the two latency histograms, and the counters a
review may bump (ServiceAccount lookups by source, remembered-decision hits and misses).

Why not prometheus-client's Counter and Histogram on the request path: each `inc`/`observe` takes a lock and goes
through several Python calls, about 9,000 instructions for the three a review records, which was 4% of all the
work a one-worker server does per small review; each counter bump cost about 3,000 more, and more still in the
multiprocess mode `--workers` used. The event loop is the only writer here, so no lock is needed.
`webhook.serving.metrics.AdmissionCollector` turns these numbers into the same metric families at scrape time.

With `serve --workers N`, each worker writes its numbers to a file about once a second (see
`serving.server.write_worker_state`) and the supervisor adds the files up when scraped, so its figures may lag by
up to a second and a worker that is killed loses at most its last second. Files of exited workers are kept, so the
totals never go down.
"""

from __future__ import annotations

from bisect import bisect_left

import orjson

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
        """One review that got no answer (a 400): counted, not timed."""
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
        child): look it up once and keep it, the hot path only calls `inc`."""
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
