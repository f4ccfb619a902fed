"""Where ServiceAccounts come from: an offline file set, or a cluster (list+watch cache with a live fallback).

The cluster cache runs the blocking `kubernetes` client in its own thread and only shares a dict with the event
loop (single assignments under the GIL; a relist swaps the whole dict), so a request never waits on the API
server unless the cache misses — then one bounded live GET runs in a small thread pool. That fallback covers the
"ServiceAccount created together with the pod" race.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from webhook.manifests import Manifest, service_account_info
from webhook.metrics import Metrics
from webhook.mutation import ServiceAccountInfo

log = logging.getLogger("serviceaccounts")

Key = tuple[str, str]


@dataclass(frozen=True)
class Lookup:
    """A lookup answer: the ServiceAccount (or None when it does not exist), where it came from, any error."""

    sa: ServiceAccountInfo | None
    source: str  # cache | live | missing | error
    error: str = ""


class ServiceAccountSource(Protocol):
    async def get(self, namespace: str, name: str) -> Lookup: ...

    def ready(self) -> tuple[bool, str]: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class StaticServiceAccounts:
    """ServiceAccounts read from manifests (`--objects`): the embedded default for local runs and CI."""

    def __init__(self, accounts: Iterable[ServiceAccountInfo]) -> None:
        self._store: dict[Key, ServiceAccountInfo] = {(sa.namespace, sa.name): sa for sa in accounts}

    @classmethod
    def from_manifests(cls, manifests: Iterable[Manifest]) -> StaticServiceAccounts:
        return cls(service_account_info(m.obj) for m in manifests if m.obj.get("kind") == "ServiceAccount")

    def lookup(self, namespace: str, name: str) -> Lookup:
        sa = self._store.get((namespace, name))
        return Lookup(sa, "cache" if sa else "missing")

    async def get(self, namespace: str, name: str) -> Lookup:
        return self.lookup(namespace, name)

    def ready(self) -> tuple[bool, str]:
        return True, f"{len(self._store)} ServiceAccounts loaded from files"

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def __len__(self) -> int:
        return len(self._store)


def _info(obj: dict[str, Any]) -> ServiceAccountInfo:
    return service_account_info(obj, default_namespace="")


class ClusterServiceAccounts:
    """A cluster-wide ServiceAccount cache: paginated list, then watch from the list's resourceVersion.

    Watches resume from the last seen resourceVersion (bookmarks keep it fresh), a 410 Gone triggers a relist,
    and errors back off exponentially up to `max_backoff`. Readiness means "listed at least once": during an API
    server outage the cached ServiceAccounts keep being served and `connected` (and its metric) turns false.
    """

    def __init__(self, api_client: Any, metrics: Metrics, *, lookup_timeout: float = 2.0,
                 watch_timeout: int = 240, page_size: int = 500, max_backoff: float = 30.0,
                 client_factory: Callable[[], Any] | None = None) -> None:
        from kubernetes import client

        # Any: the calls use _preload_content=False, which returns raw urllib3 responses, not the typed models.
        self._core: Any = client.CoreV1Api(api_client)
        self._live: Any = client.CoreV1Api(client_factory() if client_factory else api_client)
        self._metrics = metrics
        self._lookup_timeout = lookup_timeout
        self._watch_timeout = watch_timeout
        self._page_size = page_size
        self._max_backoff = max_backoff
        self._store: dict[Key, ServiceAccountInfo] = {}
        self._resource_version = ""
        self._synced = threading.Event()
        self._connected = False
        self._stopping = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name="serviceaccount-watch", daemon=True)
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="serviceaccount-get")

    # -- event loop side -------------------------------------------------------------------------------------
    async def get(self, namespace: str, name: str) -> Lookup:
        sa = self._store.get((namespace, name))
        if sa is not None:
            self._metrics.sa_lookups.labels("cache").inc()
            return Lookup(sa, "cache")
        loop = asyncio.get_running_loop()
        try:
            found = await asyncio.wait_for(loop.run_in_executor(self._pool, self._read, namespace, name),
                                           timeout=self._lookup_timeout + 0.5)
        except Exception as exc:  # timeout, connection refused, 5xx: the caller decides (deny, fail closed)
            self._metrics.sa_lookups.labels("error").inc()
            return Lookup(None, "error", error=f"{type(exc).__name__}: {exc}".strip())
        if found is None:
            self._metrics.sa_lookups.labels("missing").inc()
            return Lookup(None, "missing")
        self._metrics.sa_lookups.labels("live").inc()
        self._store[(namespace, name)] = found
        return Lookup(found, "live")

    def ready(self) -> tuple[bool, str]:
        if not self._synced.is_set():
            return False, "ServiceAccount cache has not synced yet"
        state = "watching" if self._connected else "API server unreachable, serving cached ServiceAccounts"
        return True, f"{len(self._store)} ServiceAccounts cached; {state}"

    @property
    def connected(self) -> bool:
        return self._connected

    def __len__(self) -> int:
        return len(self._store)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        response = self._response
        if response is not None:
            # Closing a socket another thread reads from may race; the stop flag ends the loop either way.
            with contextlib.suppress(Exception):
                response.close()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    # -- watch thread ----------------------------------------------------------------------------------------
    def _read(self, namespace: str, name: str) -> ServiceAccountInfo | None:
        from kubernetes.client.exceptions import ApiException

        try:
            response = self._live.read_namespaced_service_account(
                name, namespace, _preload_content=False, _request_timeout=self._lookup_timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return _info(orjson.loads(response.data))

    def _run(self) -> None:
        backoff = 0.5
        need_list = True
        while not self._stopping.is_set():
            try:
                if need_list:
                    self._list()
                    need_list = False
                need_list = self._watch()
                backoff = 0.5
            except Exception as exc:
                if self._stopping.is_set():
                    break
                self._set_connected(False)
                self._metrics.watch_errors.inc()
                log.warning("ServiceAccount list/watch failed; retrying", extra={"error": str(exc)[:300],
                                                                                 "retry-in": backoff})
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)

    def _set_connected(self, value: bool) -> None:
        self._connected = value
        self._metrics.cache_synced.set(1 if value else 0)

    def _list(self) -> None:
        store: dict[Key, ServiceAccountInfo] = {}
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": self._page_size, "_preload_content": False, "_request_timeout": 60}
            if token:
                kwargs["_continue"] = token
            page = orjson.loads(self._core.list_service_account_for_all_namespaces(**kwargs).data)
            for item in page.get("items") or []:
                sa = _info(item)
                store[(sa.namespace, sa.name)] = sa
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                self._resource_version = metadata.get("resourceVersion", "")
                break
        self._store = store
        self._metrics.cache_size.set(len(store))
        self._set_connected(True)
        self._synced.set()
        log.info("ServiceAccount cache listed", extra={"count": len(store), "resource-version":
                                                       self._resource_version})

    def _watch(self) -> bool:
        """Watch until the server ends the stream; return True when a relist is needed (410 Gone)."""
        response = self._core.list_service_account_for_all_namespaces(
            watch=True, resource_version=self._resource_version, allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout, _preload_content=False,
            _request_timeout=(10, self._watch_timeout + 30))
        self._response = response
        self._set_connected(True)
        try:
            for line in _lines(response):
                if self._stopping.is_set():
                    return False
                event = orjson.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        log.info("ServiceAccount watch expired (410 Gone); relisting")
                        return True
                    raise RuntimeError(f"watch error: {obj.get('message')}")
                version = (obj.get("metadata") or {}).get("resourceVersion")
                if version:
                    self._resource_version = version
                if kind in ("ADDED", "MODIFIED"):
                    sa = _info(obj)
                    self._store[(sa.namespace, sa.name)] = sa
                elif kind == "DELETED":
                    sa = _info(obj)
                    self._store.pop((sa.namespace, sa.name), None)
                self._metrics.cache_size.set(len(self._store))
        finally:
            self._response = None
            response.release_conn()
        return False


def _lines(response: Any) -> Iterator[bytes]:
    buffer = b""
    for chunk in response.stream(65536, decode_content=True):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer
