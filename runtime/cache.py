"""In-process LRUs: ``Lru``, a bounded map, and ``ResultCache``, results keyed by a hash of
what determines them.

A process may keep a cache, never the truth: entries are rebuilt by doing the work again, and a
process restart starts cold (``runtime.shared_cache`` keeps AI results for every replica).
One event loop uses each, so they need no lock.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def cache_key(**parts: Any) -> str:
    """SHA-256 of the canonical JSON of ``parts`` (enums by their value, dataclasses as
    objects, so ``dataclasses.asdict`` of options may go in as they are)."""
    canonical = json.dumps(
        parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_jsonable
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    raise TypeError(f"{type(value).__name__} has no canonical JSON form")


class Lru(Generic[K, V]):
    """At most ``capacity`` entries (0 keeps none). Reading or writing an entry makes it the
    most recent; beyond the capacity the least recent go."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        if self.capacity <= 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> None:
        """Forgets ``key`` (nothing happens when it is not there)."""
        self._entries.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)


class ResultCache(Lru[str, V]):
    """Results by ``cache_key``, counting hits and misses."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> V | None:
        value = super().get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value
