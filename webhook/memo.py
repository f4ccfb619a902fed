"""Values derived from the shared, immutable inputs of a review, memoised by object identity.

Every review of a pod run by the same cached ServiceAccount, under the same config and policy, derives the same env
values, status-annotation text and ServiceAccount findings. Deriving them once per combination keeps that work off
the per-request path without changing any answer: the inputs are immutable and are replaced (never modified) when
they change, so a changed ServiceAccount, a reloaded policy or a new config is a new object and a miss.

Identity, not equality: comparing annotations or pydantic models by value would cost what the memo saves. Each entry
keeps its objects alive, so an id() cannot be reused by another object while its entry exists. Bounded: when full,
the memo starts over (the working set is the ServiceAccounts of the pods being created right now).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class IdentityMemo(Generic[V]):
    def __init__(self, max_entries: int = 256) -> None:
        self._max_entries = max_entries
        self._entries: dict[tuple[Hashable, ...], tuple[tuple[object, ...], V]] = {}
        # The entry used last, tried first: consecutive reviews mostly share their inputs, and comparing a few
        # references costs a tenth of building and hashing the key. It keeps its objects alive, like an entry.
        self._last: tuple[tuple[object, ...], Hashable, V] | None = None

    def get(self, objects: tuple[object, ...], extra: Hashable = None) -> V | None:
        """The value stored for exactly these objects (by identity) and `extra`, or None.

        The key's ids are enough: an entry keeps its objects alive, so a live object with one of those ids is the
        very object the entry was stored for."""
        last = self._last
        if last is not None and _same_objects(last[0], objects) and last[1] == extra:
            return last[2]
        entry = self._entries.get((*[id(o) for o in objects], extra))
        if entry is None:
            return None
        self._last = (entry[0], extra, entry[1])
        return entry[1]

    def put(self, objects: tuple[object, ...], extra: Hashable, value: V) -> V:
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[(*[id(o) for o in objects], extra)] = (objects, value)
        self._last = (objects, extra, value)
        return value

    def __len__(self) -> int:
        return len(self._entries)


def _same_objects(known: tuple[object, ...], objects: tuple[object, ...]) -> bool:
    if len(known) != len(objects):
        return False
    for index in range(len(objects)):  # noqa: SIM110 - a plain loop: all() over a generator costs more here
        if known[index] is not objects[index]:
            return False
    return True
