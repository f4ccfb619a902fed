"""A cluster-wide list+watch cache for one resource kind, run by the blocking `kubernetes` client in a thread.

The event loop only reads a dict (single assignments under the GIL; a relist swaps the whole dict), so a request
never waits on the API server unless the cache misses — then one bounded live GET runs in a small thread pool.
Watches resume from the last seen resourceVersion (bookmarks keep it fresh), a 410 Gone triggers a relist, and
errors back off exponentially up to `max_backoff`. Readiness means "listed at least once": during an API server
outage cached objects keep being served and `connected` turns false.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, Protocol, TypeVar

import orjson

log = logging.getLogger("cache")

K = TypeVar("K")
V = TypeVar("V")
Key_contra = TypeVar("Key_contra", contravariant=True)


class Store(Protocol[Key_contra, V]):
    """What the cache needs from its map (a dict, or NamespacedStore for ServiceAccounts)."""

    def get(self, key: Key_contra, /) -> V | None: ...

    def __setitem__(self, key: Key_contra, value: V, /) -> None: ...

    def pop(self, key: Key_contra, default: None, /) -> V | None: ...

    def __len__(self) -> int: ...


class NamespacedStore(Generic[V]):
    """A map keyed by (namespace, name), held as one dict per namespace: no key tuple per object (56 bytes each,
    5.6 MB at 100k ServiceAccounts). Written by the watch thread only; reads are single dict lookups."""

    def __init__(self) -> None:
        self._namespaces: dict[str, dict[str, V]] = {}
        self._size = 0

    def get(self, key: tuple[str, str], /) -> V | None:
        names = self._namespaces.get(key[0])
        return None if names is None else names.get(key[1])

    def __setitem__(self, key: tuple[str, str], value: V, /) -> None:
        names = self._namespaces.get(key[0])
        if names is None:
            names = self._namespaces[key[0]] = {}
        if key[1] not in names:
            self._size += 1
        names[key[1]] = value

    def pop(self, key: tuple[str, str], default: None, /) -> V | None:
        names = self._namespaces.get(key[0])
        if names is None or key[1] not in names:
            return default
        self._size -= 1
        value = names.pop(key[1])
        if not names:
            del self._namespaces[key[0]]
        return value

    def __len__(self) -> int:
        return self._size


class LookupFailed(Exception):
    """The live GET for a cache miss failed (timeout, connection refused, 5xx)."""


class ListWatchCache(Generic[K, V]):
    """Subclasses give the list/read calls and how to shrink an object to (key, value)."""

    kind = "object"

    def __init__(self, *, lookup_timeout: float = 2.0, watch_timeout: int = 240, page_size: int = 500,
                 max_backoff: float = 30.0) -> None:
        self._lookup_timeout = lookup_timeout
        self._watch_timeout = watch_timeout
        self._page_size = page_size
        self._max_backoff = max_backoff
        self._store: Store[K, V] = self._new_store()
        self._resource_version = ""
        self._synced = threading.Event()
        self._connected = False
        self._last_error = ""
        self._stopping = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name=f"{self.kind}-watch", daemon=True)
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"{self.kind}-get")

    # -- to override ---------------------------------------------------------------------------------------------
    def _list_call(self, **kwargs: Any) -> Any:
        raise NotImplementedError

    def _read_call(self, key: K, timeout: float) -> Any:
        raise NotImplementedError

    def _shrink(self, obj: dict[str, Any]) -> tuple[K, V]:
        raise NotImplementedError

    def _on_state(self, connected: bool, size: int) -> None:
        """Metrics hook, called from the watch thread."""

    def _new_store(self) -> Store[K, V]:
        return dict()

    # -- event loop side -------------------------------------------------------------------------------------
    def cached(self, key: K) -> V | None:
        return self._store.get(key)

    async def fetch(self, key: K) -> V | None:
        """Live GET for a cache miss; None when the object does not exist; raises LookupFailed otherwise.

        The answer is not written into the cache: only the watch writes, so a slow GET can never overwrite a
        newer version (or resurrect a deletion) that the watch delivered meanwhile.
        """
        loop = asyncio.get_running_loop()
        try:
            found = await asyncio.wait_for(loop.run_in_executor(self._pool, self._read, key),
                                           timeout=self._lookup_timeout + 0.5)
        except Exception as exc:
            raise LookupFailed(f"{type(exc).__name__}: {exc}".strip()) from exc
        return found

    def ready(self) -> tuple[bool, str]:
        if not self._synced.is_set():
            why = f": {self._last_error} (retrying)" if self._last_error else ""
            return False, f"{self.kind} cache has not synced yet{why}"
        state = "watching" if self._connected else "API server unreachable, serving cached objects"
        return True, f"{len(self._store)} {self.kind}s cached; {state}"

    def __len__(self) -> int:
        return len(self._store)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        response = self._response
        if response is not None:
            # Closed from a daemon thread of its own: closing the stream blocks until the watch thread's read
            # returns, which an idle watch (no event, no bookmark) does only at its timeout (minutes) - SIGTERM
            # then ended in the kubelet's SIGKILL. The stop flag ends the loop either way.
            threading.Thread(target=_close_quietly, args=(response,), name=f"{self.kind}-close", daemon=True).start()
        if self._thread.ident is not None:  # started
            # A daemon thread: one stuck in a call to a hung API server must not hold up the exit for long.
            self._thread.join(timeout=1)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- watch thread ----------------------------------------------------------------------------------------
    def _read(self, key: K) -> V | None:
        from kubernetes.client.exceptions import ApiException

        try:
            response = self._read_call(key, self._lookup_timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self._shrink(orjson.loads(response.data))[1]

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
                self._last_error = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
                log.warning(f"{self.kind} list/watch failed; retrying",
                            extra={"error": str(exc)[:300], "retry-in": backoff})
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)

    def _set_connected(self, value: bool) -> None:
        self._connected = value
        self._on_state(value, len(self._store))

    def _list(self) -> None:
        store = self._new_store()
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": self._page_size, "_preload_content": False, "_request_timeout": 60}
            if token:
                kwargs["_continue"] = token
            page = orjson.loads(self._list_call(**kwargs).data)
            for item in page.get("items") or []:
                key, value = self._shrink(item)
                store[key] = value
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                self._resource_version = metadata.get("resourceVersion", "")
                break
        self._store = store
        self._set_connected(True)
        self._synced.set()
        log.info(f"{self.kind} cache listed", extra={"count": len(store), "resource-version":
                                                     self._resource_version})

    def _watch(self) -> bool:
        """Watch until the server ends the stream; return True when a relist is needed (410 Gone)."""
        response = self._list_call(
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
                        log.info(f"{self.kind} watch expired (410 Gone); relisting")
                        return True
                    raise RuntimeError(f"watch error: {obj.get('message')}")
                version = (obj.get("metadata") or {}).get("resourceVersion")
                if version:
                    self._resource_version = version
                if kind in ("ADDED", "MODIFIED"):
                    key, value = self._shrink(obj)
                    self._store[key] = value
                elif kind == "DELETED":
                    key, _ = self._shrink(obj)
                    self._store.pop(key, None)
                self._on_state(True, len(self._store))
        finally:
            self._response = None
            response.release_conn()
        return False


def _close_quietly(response: Any) -> None:
    with contextlib.suppress(Exception):
        response.close()


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


def core_api(api_client: Any, factory: Callable[[], Any] | None = None) -> tuple[Any, Any]:
    """Two CoreV1Api clients: one for the watch thread, one (own connection pool) for live lookups.

    Typed as Any: the calls use _preload_content=False and return raw urllib3 responses, not the typed models.
    """
    from kubernetes import client

    return client.CoreV1Api(api_client), client.CoreV1Api(factory() if factory else api_client)
