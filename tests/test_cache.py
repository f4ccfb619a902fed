"""The ServiceAccount cache's data structures and its list/watch handling, fed raw API server JSON offline (the
real API server paths are in tests/e2e)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from webhook.core.model import ServiceAccountInfo
from webhook.serving.metrics import Metrics
from webhook.sources.cache import NamespacedStore
from webhook.sources.manifests import service_account_info
from webhook.sources.serviceaccounts import _ServiceAccountCache

WI = "azure.workload.identity"


def test_service_account_info_keeps_only_identity_keys() -> None:
    sa = service_account_info({"metadata": {
        "name": "app", "namespace": "team", "resourceVersion": "42",
        "annotations": {f"{WI}/client-id": "abc", "kubectl.kubernetes.io/last-applied-configuration": "x" * 300},
        "labels": {f"{WI}/use": "true", "app": "x"}}})
    assert (sa.namespace, sa.name, sa.resource_version) == ("team", "app", "42")
    assert dict(sa.annotations) == {f"{WI}/client-id": "abc"} and dict(sa.labels) == {f"{WI}/use": "true"}
    bare = service_account_info({"metadata": {"name": "default", "namespace": "team"}})
    other = service_account_info({"metadata": {"name": "b", "namespace": "team", "annotations": {"x": "y"}}})
    assert bare.annotations == other.annotations == {} and bare.labels == other.labels == {}


def test_namespaced_store() -> None:
    store: NamespacedStore[str] = NamespacedStore()
    store[("a", "x")] = "1"
    store[("a", "x")] = "2"  # a new version replaces, and is not counted twice
    store[("b", "x")] = "3"
    assert len(store) == 2 and store.get(("a", "x")) == "2" and store.get(("b", "x")) == "3"
    assert store.get(("a", "y")) is None and store.get(("c", "x")) is None
    assert store.pop(("a", "y"), None) is None and store.pop(("c", "x"), None) is None and len(store) == 2
    assert store.pop(("a", "x"), None) == "2" and len(store) == 1 and "a" not in store._namespaces


class Response:
    def __init__(self, lines: list[dict[str, Any]]) -> None:
        self.data = b"\n".join(orjson.dumps(line) for line in lines) + b"\n"
        self.released = False

    def stream(self, size: int, decode_content: bool) -> Iterator[bytes]:
        for start in range(0, len(self.data), 7):  # events split across chunks at odd places
            yield self.data[start:start + 7]

    def release_conn(self) -> None:
        self.released = True


def account(name: str, namespace: str, version: int, client_id: str = "") -> dict[str, Any]:
    annotations = {f"{WI}/client-id": client_id} if client_id else {}
    return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": str(version),
                         "annotations": annotations}}


class Fed(_ServiceAccountCache):
    """The real cache with the API calls replaced by canned list pages and watch streams."""

    def __init__(self, pages: list[dict[str, Any]], watches: list[list[dict[str, Any]]]) -> None:
        self._pages = iter(pages)
        self._watches = iter(watches)
        self.calls: list[dict[str, Any]] = []
        self._metrics = Metrics()
        from webhook.sources.cache import ListWatchCache

        ListWatchCache.__init__(self)

    def _list_call(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if kwargs.get("watch"):
            return Response(next(self._watches))
        page = Response([])
        page.data = orjson.dumps(next(self._pages))
        return page


def test_list_in_pages_then_watch_events() -> None:
    pages = [{"items": [account("a", "ns1", 1, "id-a"), account("b", "ns1", 2)], "metadata": {"continue": "t"}},
             {"items": [account("c", "ns2", 3, "id-c")], "metadata": {"resourceVersion": "10"}}]
    watch = [{"type": "ADDED", "object": account("d", "ns2", 11, "id-d")},
             {"type": "MODIFIED", "object": account("a", "ns1", 12, "id-a2")},
             {"type": "DELETED", "object": account("b", "ns1", 13)},
             {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "14"}}},
             {"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}}]
    cache = Fed(pages, [watch])
    cache._list()
    assert len(cache) == 3 and cache.ready()[0]
    assert [c.get("_continue") for c in cache.calls] == [None, "t"]
    first_a = cache.cached(("ns1", "a"))
    assert isinstance(first_a, ServiceAccountInfo) and first_a.annotations[f"{WI}/client-id"] == "id-a"
    assert cache._watch() is True  # 410 Gone: relist
    assert cache.calls[-1]["resource_version"] == "10"
    assert cache._resource_version == "14"
    assert len(cache) == 3 and cache.cached(("ns1", "b")) is None
    new_a = cache.cached(("ns1", "a"))
    assert new_a is not None and new_a is not first_a and new_a.annotations[f"{WI}/client-id"] == "id-a2"
    assert cache.cached(("ns2", "d")) is not None
    assert cache._metrics.registry.get_sample_value("wi_webhook_serviceaccount_cache_size") == 3


def test_cluster_source_answers_from_the_cache_and_counts_each_hit() -> None:
    """A cache hit answers the cached ServiceAccount (the newest the watch delivered), and is always counted."""
    import asyncio

    from webhook.sources.serviceaccounts import ClusterServiceAccounts

    metrics = Metrics()
    source = ClusterServiceAccounts(None, metrics, watch_namespaces=False)
    cache = Fed([{"items": [account("a", "ns1", 1, "id-a")], "metadata": {"resourceVersion": "1"}}],
                [[{"type": "MODIFIED", "object": account("a", "ns1", 2, "id-a2")}]])
    source.accounts = cache

    async def not_in_the_api_server(key: tuple[str, str]) -> None:
        return None

    cache.fetch = not_in_the_api_server  # type: ignore[method-assign]

    async def lookups() -> None:
        cache._list()
        first, again = await source.get("ns1", "a"), await source.get("ns1", "a")
        assert first == again and first.source == "cache" and first.sa is cache.cached(("ns1", "a"))
        assert (await source.get("ns1", "missing")).source == "missing"  # not a cache hit
        cache._watch()
        replaced = await source.get("ns1", "a")
        assert replaced.source == "cache" and replaced.sa is not None and replaced.sa is not first.sa
        assert replaced.sa.annotations[f"{WI}/client-id"] == "id-a2"

    asyncio.run(lookups())
    assert metrics.registry.get_sample_value("wi_webhook_serviceaccount_lookups_total", {"source": "cache"}) == 3


class Counted:
    """Stands in for the ServiceAccount cache of ClusterServiceAccounts: a store the 'watch' writes, and a live
    GET that counts its calls and answers from `api` (what the API server has) after a short delay."""

    def __init__(self) -> None:
        self.store: dict[tuple[str, str], ServiceAccountInfo] = {}
        self.api: dict[tuple[str, str], ServiceAccountInfo] = {}
        self.gets = 0

    def cached(self, key: tuple[str, str]) -> ServiceAccountInfo | None:
        return self.store.get(key)

    async def fetch(self, key: tuple[str, str]) -> ServiceAccountInfo | None:
        import asyncio

        self.gets += 1
        await asyncio.sleep(0.05)
        return self.api.get(key)


def counted_source(ttl: float = 30.0) -> tuple[Any, Counted]:
    from webhook.sources.serviceaccounts import ClusterServiceAccounts

    source = ClusterServiceAccounts(None, Metrics(), watch_namespaces=False, negative_ttl=ttl)
    fake = Counted()
    source.accounts = fake  # type: ignore[assignment]
    return source, fake


def test_missing_service_account_lookups_are_coalesced_and_remembered_briefly() -> None:
    """A flood of reviews for a ServiceAccount that does not exist: one GET for the concurrent ones and none
    while the negative entry lasts (each cost 2 GETs before: 4,720 reviews -> 9,440 GETs)."""
    import asyncio

    async def flood() -> None:
        source, fake = counted_source()
        answers = await asyncio.gather(*(source.get("ns", "ghost") for _ in range(200)))
        assert {a.source for a in answers} == {"missing"} and fake.gets == 1
        for _ in range(100):
            assert (await source.get("ns", "ghost")).source == "missing"
        assert fake.gets == 1
        assert (await source.get("ns", "Not_A_Name")).source == "missing" and fake.gets == 1  # cannot exist
        assert (await source.get("ns", "other")).source == "missing" and fake.gets == 2  # another key: asked

    asyncio.run(flood())


def test_service_account_created_after_a_miss_is_found() -> None:
    """The SA/pod creation race: the pod's first review finds no ServiceAccount; once it exists, the watch's
    event makes the next review find it at once (the negative entry never hides the cache), and without the
    event it is found by a live GET as soon as the short negative entry expires."""
    import asyncio

    async def race() -> None:
        source, fake = counted_source(ttl=0.3)
        assert (await source.get("ns", "late")).source == "missing"
        sa = ServiceAccountInfo(namespace="ns", name="late", annotations={f"{WI}/client-id": "id"})
        fake.store[("ns", "late")] = sa  # the watch delivered the new ServiceAccount
        found = await source.get("ns", "late")
        assert found.sa is sa and found.source == "cache"

        assert (await source.get("ns", "later")).source == "missing"
        fake.api[("ns", "later")] = sa  # created in the API server; the watch has not caught up
        assert (await source.get("ns", "later")).source == "missing"  # within the negative entry
        await asyncio.sleep(0.35)
        live = await source.get("ns", "later")
        assert live.sa is sa and live.source == "live" and fake.gets == 3

    asyncio.run(race())


def test_negative_entries_are_bounded() -> None:
    import asyncio

    from webhook.sources import serviceaccounts

    async def many() -> None:
        source, _ = counted_source()
        for index in range(serviceaccounts.NEGATIVE_MAX_ENTRIES + 50):
            source._sa_lookups.remember_missing(("ns", f"sa-{index}"))
        negative = source._sa_lookups.negative
        assert len(negative) == serviceaccounts.NEGATIVE_MAX_ENTRIES
        assert ("ns", "sa-0") not in negative and ("ns", "sa-10049") in negative

    asyncio.run(many())


def test_missing_namespace_lookups_are_coalesced_and_remembered_too() -> None:
    """Policy namespace overrides look the review's namespace up: made-up namespaces must not become GETs each."""
    import asyncio

    from webhook.sources.serviceaccounts import LiveLookups

    class Namespaces:
        def __init__(self) -> None:
            self.gets = 0

        def cached(self, name: str) -> None:
            return None

        async def fetch(self, name: str) -> None:
            self.gets += 1
            await asyncio.sleep(0.05)
            return None

    async def flood() -> None:
        source, _ = counted_source()
        fake = Namespaces()
        source.namespaces = fake  # type: ignore[assignment]
        source._ns_lookups = LiveLookups(fake.fetch, 30.0)
        answers = await asyncio.gather(*(source.namespace("made-up") for _ in range(100)))
        assert answers == [None] * 100 and fake.gets == 1
        assert await source.namespace("made-up") is None and fake.gets == 1
        assert await source.namespace("Not_A_Namespace") is None and fake.gets == 1

    asyncio.run(flood())
