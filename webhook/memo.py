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

    def get(self, objects: tuple[object, ...], extra: Hashable = None) -> V | None:
        """The value stored for exactly these objects (by identity) and `extra`, or None.

        The key's ids are enough: an entry keeps its objects alive, so a live object with one of those ids is the
        very object the entry was stored for."""
        entry = self._entries.get((*[id(o) for o in objects], extra))
        return None if entry is None else entry[1]

    def put(self, objects: tuple[object, ...], extra: Hashable, value: V) -> V:
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[(*[id(o) for o in objects], extra)] = (objects, value)
        return value

    def __len__(self) -> int:
        return len(self._entries)
