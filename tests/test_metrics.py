"""The per-review metrics (serving.metrics.AdmissionStats, exported by AdmissionCollector) expose exactly what
prometheus-client's own Counter and Histograms exposed for the same reviews, and add up across workers."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from webhook.serving.metrics import REFERENCE_BUCKETS, AdmissionStats, Metrics
from webhook.serving.workers import worker_admission_stats

Review = tuple[str, str, float | None]  # decision, namespace, seconds (None: a 400, counted and not timed)

reviews = st.lists(st.one_of(
    st.tuples(st.sampled_from(["mutated", "skipped", "denied"]), st.sampled_from(["ns", "other", "kube-system"]),
              st.one_of(st.sampled_from([0.0, *REFERENCE_BUCKETS, 3.5]),
                        st.floats(min_value=0, max_value=10, allow_nan=False))),
    st.just(("error", "", None))), max_size=60)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if not s.name.endswith("_created")}


def ours(items: list[Review]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    metrics = Metrics()
    for decision, namespace, seconds in items:
        if seconds is None:
            metrics.admission.of(decision, namespace).tally()
        else:
            metrics.admission.of(decision, namespace).observe(seconds)
    return samples(generate_latest(metrics.registry).decode())


def prometheus_clients(items: list[Review]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What the webhook recorded with prometheus-client before AdmissionStats."""
    registry = CollectorRegistry()
    requests = Counter("wi_webhook_admission_requests", "", ["decision", "namespace"], registry=registry)
    duration = Histogram("wi_webhook_admission_duration_seconds", "", buckets=REFERENCE_BUCKETS, registry=registry)
    reference = Histogram("azwi_mutation_request", "", ["namespace", "service_name"], buckets=REFERENCE_BUCKETS,
                          registry=registry)
    for decision, namespace, seconds in items:
        requests.labels(decision, namespace).inc()
        if seconds is not None:
            duration.observe(seconds)
            reference.labels(namespace, "webhook").observe(seconds)
    return samples(generate_latest(registry).decode())


@settings(max_examples=200, deadline=None)
@given(reviews)
def test_same_exposition_as_prometheus_client(items: list[Review]) -> None:
    got, want = ours(items), prometheus_clients(items)
    mine = {key: value for key, value in got.items() if key[0].startswith(("wi_webhook_admission", "azwi_"))}
    assert mine.keys() == want.keys()
    for key, value in want.items():  # sums are added in another order: equal up to rounding
        assert math.isclose(mine[key], value, rel_tol=1e-9, abs_tol=1e-12), key


def test_bucket_bounds_are_inclusive_like_prometheus() -> None:
    got = ours([("mutated", "ns", 0.001), ("mutated", "ns", 0.0010001), ("mutated", "ns", 3.0), ("mutated", "ns", 9)])
    bucket = "azwi_mutation_request_bucket"
    labels = (("namespace", "ns"), ("service_name", "webhook"))
    assert got[(bucket, (("le", "0.001"), *labels))] == 1
    assert got[(bucket, (("le", "0.002"), *labels))] == 2
    assert got[(bucket, (("le", "3.0"), *labels))] == 3
    assert got[(bucket, (("le", "+Inf"), *labels))] == 4


@given(reviews, reviews)
def test_worker_snapshots_add_up(first: list[Review], second: list[Review]) -> None:
    def stats_of(items: list[Review]) -> AdmissionStats:
        stats = AdmissionStats()
        for decision, namespace, seconds in items:
            series = stats.of(decision, namespace)
            series.tally() if seconds is None else series.observe(seconds)
        return stats

    merged = AdmissionStats()
    merged.add(stats_of(first).to_json())
    merged.add(stats_of(second).to_json())
    together = stats_of(first + second)
    assert merged.series.keys() == together.series.keys()
    for key, series in together.series.items():
        assert (merged.series[key].count, merged.series[key].buckets) == (series.count, series.buckets)
        assert math.isclose(merged.series[key].seconds, series.seconds, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize(("snapshot", "error"), [
    (b"{", "not a worker snapshot ({\"series\": [[decision, namespace, count, seconds, buckets]"),
    (b'{"a": 1}', "not a worker snapshot"),
    (b'[["mutated", "ns", 1, 0.1, []]]', "not a worker snapshot"),  # the rows alone, without counters
    (b'{"series": [["mutated", "ns", 1, 0.1]], "counters": []}', "not a worker snapshot"),
    (b'{"series": [["mutated", "ns", "x", 0.1, []]], "counters": []}', "not a worker snapshot"),
    (b'{"series": [], "counters": [["c", "l"]]}', "not a worker snapshot"),
    (b'{"series": [], "counters": [["c", "l", "many"]]}', "not a worker snapshot"),
    (b'{"series": [["mutated", "ns", 1, 0.1, [1, 2]]], "counters": []}', "does not have the 33 buckets"),
])
def test_a_bad_snapshot_is_refused_whole(snapshot: bytes, error: str) -> None:
    stats = AdmissionStats()
    stats.of("mutated", "ns").observe(0.5)
    stats.counter("c", "l").inc()
    before = stats.to_json()
    with pytest.raises(ValueError, match=re.escape(error)):
        stats.add(snapshot)
    assert stats.to_json() == before


Bump = tuple[str, str]  # (counter, label) as the webhook bumps them
bumps = st.lists(st.tuples(st.just("wi_webhook_serviceaccount_lookups"),
                           st.sampled_from(["cache", "live", "missing", "error"])), max_size=40)


@settings(max_examples=100, deadline=None)
@given(bumps)
def test_counters_expose_what_prometheus_client_counters_did(items: list[Bump]) -> None:
    """The ServiceAccount lookup counters, with the child the webhook made at start (cache) exported at 0 as
    prometheus-client did."""
    metrics = Metrics()
    registry = CollectorRegistry()
    theirs = {name: Counter(name, "", [label], registry=registry) for name, label in (
        ("wi_webhook_serviceaccount_lookups", "source"),)}
    theirs["wi_webhook_serviceaccount_lookups"].labels("cache")
    for name, label in items:
        metrics.sa_lookup(label).inc()
        theirs[name].labels(label).inc()
    got = {key: value for key, value in samples(generate_latest(metrics.registry).decode()).items()
           if key[0].startswith(tuple(theirs))}
    assert got == samples(generate_latest(registry).decode())


@given(bumps, bumps)
def test_worker_counters_add_up(first: list[Bump], second: list[Bump]) -> None:
    def stats_of(items: list[Bump]) -> AdmissionStats:
        stats = AdmissionStats()
        for name, label in items:
            stats.counter(name, label).inc()
        return stats

    merged = AdmissionStats()
    merged.add(stats_of(first).to_json())
    merged.add(stats_of(second).to_json())
    assert {key: t.value for key, t in merged.counters.items()} == \
        {key: t.value for key, t in stats_of(first + second).counters.items()}


def test_supervisor_adds_up_worker_files_and_skips_a_bad_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for pid, count in ((101, 2), (102, 3)):
        stats = AdmissionStats()
        for _ in range(count):
            stats.of("mutated", "ns").observe(0.002)
        (tmp_path / f"admission-{pid}.json").write_bytes(stats.to_json())
    (tmp_path / "admission-103.json").write_bytes(b"not json")
    (tmp_path / "admission-104.tmp").write_bytes(b"half written")  # never read: not a .json file
    merged = worker_admission_stats(tmp_path)
    assert merged.series[("mutated", "ns")].count == 5
    assert [r.file for r in caplog.records] == [str(tmp_path / "admission-103.json")]  # type: ignore[attr-defined]
