"""Where ServiceAccounts (and namespaces, for policy overrides) come from: manifests, or the cluster."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from webhook.core.model import NamespaceInfo, ServiceAccountInfo
from webhook.policy.rules import OVERRIDE_PREFIX
from webhook.serving.metrics import Metrics
from webhook.sources.cache import ListWatchCache, LookupFailed, NamespacedStore, core_api
from webhook.sources.manifests import Manifest, ManifestError, ObjectShapeError, service_account_info, shape_problem

Key = tuple[str, str]
K = TypeVar("K")
V = TypeVar("V")


class Lookup(NamedTuple):
    """A lookup answer: the ServiceAccount (or None when it does not exist), where it came from, any error."""

    sa: ServiceAccountInfo | None
    source: str  # cache | live | missing | error
    error: str = ""


_MISSING = Lookup(None, "missing")
# How long a ServiceAccount found missing by a live GET is believed missing without asking again (seconds), and
# how many such names are remembered. Short: the ServiceAccount may be created a moment later, and the watch
# (which is always asked first) normally delivers it well within this.
NEGATIVE_TTL = 2.0
NEGATIVE_MAX_ENTRIES = 10_000
# Kubernetes object names (DNS-1123 subdomain); anything else cannot exist, so it is never looked up.
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def is_dns_subdomain(name: str) -> bool:
    return len(name) <= 253 and _SUBDOMAIN.fullmatch(name) is not None


class ServiceAccountSource(Protocol):
    """What the handler asks for a review's ServiceAccount (and Namespace); `serve` picks one of the two below."""

    async def get(self, namespace: str, name: str) -> Lookup: ...

    async def namespace(self, name: str) -> NamespaceInfo | None: ...

    def ready(self) -> tuple[bool, str]: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


def namespace_info(obj: dict[str, Any]) -> NamespaceInfo:
    """Shrink a Namespace to its name and `wi-webhook/*` labels and annotations (policy overrides)."""
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ObjectShapeError(f"metadata must be a mapping, got {type(metadata).__name__}")

    def ours(values: Any) -> dict[str, str]:
        if not isinstance(values, dict):
            return {}
        return {k: str(v) for k, v in values.items() if isinstance(k, str) and k.startswith(OVERRIDE_PREFIX)}

    return NamespaceInfo(str(metadata.get("name") or ""), ours(metadata.get("labels")),
                         ours(metadata.get("annotations")))


class StaticServiceAccounts:
    """ServiceAccounts (and Namespaces) read from manifests (`--objects`): the default for local runs and CI."""

    def __init__(self, accounts: Iterable[ServiceAccountInfo], namespaces: Iterable[NamespaceInfo] = ()) -> None:
        self._store: dict[Key, ServiceAccountInfo] = {(sa.namespace, sa.name): sa for sa in accounts}
        self._namespaces = {ns.name: ns for ns in namespaces}

    @classmethod
    def from_manifests(cls, manifests: Iterable[Manifest], default_namespace: str = "default"
                       ) -> StaticServiceAccounts:
        """ManifestError (naming the file, document and field) for a ServiceAccount or Namespace of the wrong
        shape."""
        accounts, namespaces = [], []
        for manifest in manifests:
            kind = manifest.obj.get("kind")
            if kind not in ("ServiceAccount", "Namespace"):
                continue
            problem = shape_problem(manifest.obj)
            if problem is not None:
                raise ManifestError(f"{manifest.source}: document {manifest.index + 1} (line {manifest.line}, "
                                    f"{kind}): {problem}")
            if kind == "ServiceAccount":
                accounts.append(service_account_info(manifest.obj, default_namespace))
            else:
                namespaces.append(namespace_info(manifest.obj))
        return cls(accounts, namespaces)

    def add(self, sa: ServiceAccountInfo) -> None:
        self._store[(sa.namespace, sa.name)] = sa

    def lookup(self, namespace: str, name: str) -> Lookup:
        sa = self._store.get((namespace, name))
        return _MISSING if sa is None else Lookup(sa, "cache")

    def namespace_now(self, name: str) -> NamespaceInfo | None:
        return self._namespaces.get(name)

    async def get(self, namespace: str, name: str) -> Lookup:
        return self.lookup(namespace, name)

    async def namespace(self, name: str) -> NamespaceInfo | None:
        return self._namespaces.get(name)

    def ready(self) -> tuple[bool, str]:
        return True, f"{len(self._store)} ServiceAccounts loaded from files"

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def __len__(self) -> int:
        return len(self._store)


class _ServiceAccountCache(ListWatchCache[Key, ServiceAccountInfo]):
    kind = "ServiceAccount"

    def __init__(self, api_client: Any, metrics: Metrics, factory: Callable[[], Any] | None, **kw: Any) -> None:
        self._core, self._live = core_api(api_client, factory)
        self._metrics = metrics
        super().__init__(**kw)

    def _list_call(self, **kwargs: Any) -> Any:
        return self._core.list_service_account_for_all_namespaces(**kwargs)

    def _read_call(self, key: Key, timeout: float) -> Any:
        return self._live.read_namespaced_service_account(key[1], key[0], _preload_content=False,
                                                          _request_timeout=timeout)

    def _shrink(self, obj: dict[str, Any]) -> tuple[Key, ServiceAccountInfo]:
        sa = service_account_info(obj, default_namespace="")
        return (sa.namespace, sa.name), sa

    def _new_store(self) -> NamespacedStore[ServiceAccountInfo]:
        return NamespacedStore()

    def _on_state(self, connected: bool, size: int) -> None:
        self._metrics.cache_synced.set(1 if connected else 0)
        self._metrics.cache_size.set(size)
        if not connected:
            self._metrics.watch_errors.inc()


class _NamespaceCache(ListWatchCache[str, NamespaceInfo]):
    kind = "Namespace"

    def __init__(self, api_client: Any, factory: Callable[[], Any] | None, **kw: Any) -> None:
        self._core, self._live = core_api(api_client, factory)
        super().__init__(**kw)

    def _list_call(self, **kwargs: Any) -> Any:
        return self._core.list_namespace(**kwargs)

    def _read_call(self, key: str, timeout: float) -> Any:
        return self._live.read_namespace(key, _preload_content=False, _request_timeout=timeout)

    def _shrink(self, obj: dict[str, Any]) -> tuple[str, NamespaceInfo]:
        info = namespace_info(obj)
        return info.name, info


class LiveLookups(Generic[K, V]):
    """Live GETs for cache misses of one kind: one GET per key at a time (concurrent reviews share it), and an
    object found missing is believed missing for `ttl` seconds (at most NEGATIVE_MAX_ENTRIES keys, oldest out
    first, so names a caller makes up cannot grow memory).

    Why: a flood of reviews for a ServiceAccount that does not exist (a buggy controller) cost the API server 2
    GETs each. Callers ask their watch cache first, so an object created since is found as soon as the watch
    delivers it, whatever a negative entry says; only a watch lagging behind the creation can make a review see
    "missing" for up to `ttl` seconds (the pod's controller retries).
    """

    def __init__(self, fetch: Callable[[K], Awaitable[V | None]], ttl: float) -> None:
        self._fetch = fetch
        self.ttl = ttl
        self.negative: dict[K, float] = {}  # key -> until when it is believed missing
        self._pending: dict[K, asyncio.Future[V | None]] = {}

    async def get(self, key: K) -> V | None:
        """The object, or None when it does not exist; LookupFailed when the API server did not answer."""
        expires = self.negative.get(key)
        if expires is not None:
            if time.monotonic() < expires:
                return None
            del self.negative[key]
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = asyncio.ensure_future(self._run(key))
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        return await asyncio.shield(pending)

    async def _run(self, key: K) -> V | None:
        found = await self._fetch(key)
        if found is None:
            self.remember_missing(key)
        return found

    def remember_missing(self, key: K) -> None:
        self.negative.pop(key, None)
        while len(self.negative) >= NEGATIVE_MAX_ENTRIES:
            del self.negative[next(iter(self.negative))]
        self.negative[key] = time.monotonic() + self.ttl


class ClusterServiceAccounts:
    """ServiceAccounts from the cluster; Namespaces too when policy namespace overrides are enabled."""

    def __init__(self, api_client: Any, metrics: Metrics, *, lookup_timeout: float = 2.0,
                 client_factory: Callable[[], Any] | None = None, watch_namespaces: bool = True,
                 negative_ttl: float = NEGATIVE_TTL, **cache_args: Any) -> None:
        self._metrics = metrics
        self.accounts = _ServiceAccountCache(api_client, metrics, client_factory, lookup_timeout=lookup_timeout,
                                             **cache_args)
        self.namespaces = _NamespaceCache(api_client, client_factory, lookup_timeout=lookup_timeout,
                                          **cache_args) if watch_namespaces else None
        self._sa_lookups: LiveLookups[Key, ServiceAccountInfo] = LiveLookups(lambda key: self.accounts.fetch(key),
                                                                             negative_ttl)
        self._ns_lookups: LiveLookups[str, NamespaceInfo] | None = (
            LiveLookups(self.namespaces.fetch, negative_ttl) if self.namespaces is not None else None)

    async def get(self, namespace: str, name: str) -> Lookup:
        """From the watch cache; on a miss, a live GET, shared and remembered when missing (see LiveLookups)."""
        sa = self.accounts.cached((namespace, name))
        if sa is not None:
            self._metrics.sa_lookup("cache").inc()
            return Lookup(sa, "cache")
        if not is_dns_subdomain(name) or (namespace and not is_dns_subdomain(namespace)):
            self._metrics.sa_lookup("missing").inc()
            return _MISSING  # no such object can exist: nothing to ask the API server
        try:
            found = await self._sa_lookups.get((namespace, name))
        except LookupFailed as exc:
            self._metrics.sa_lookup("error").inc()
            return Lookup(None, "error", error=str(exc))
        self._metrics.sa_lookup("live" if found else "missing").inc()
        return Lookup(found, "live") if found else _MISSING

    async def namespace(self, name: str) -> NamespaceInfo | None:
        if self.namespaces is None or self._ns_lookups is None:
            return None
        cached = self.namespaces.cached(name)
        if cached is not None:
            return cached
        if not is_dns_subdomain(name):
            return None
        try:
            return await self._ns_lookups.get(name)
        except LookupFailed:
            return None  # no overrides rather than a denial: the rules' own modes still apply

    def ready(self) -> tuple[bool, str]:
        ok, detail = self.accounts.ready()
        if self.namespaces is not None:
            ns_ok, ns_detail = self.namespaces.ready()
            return ok and ns_ok, f"{detail}; {ns_detail}"
        return ok, detail

    def start(self) -> None:
        self.accounts.start()
        if self.namespaces is not None:
            self.namespaces.start()

    def stop(self) -> None:
        self.accounts.stop()
        if self.namespaces is not None:
            self.namespaces.stop()

    def __len__(self) -> int:
        return len(self.accounts)
