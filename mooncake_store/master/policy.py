"""Eviction policies: which objects to give up first when space runs short.

A policy only orders keys; the index decides what may actually go (leases,
pins and in-flight writes are skipped there). Policies are chosen by name
with `make_policy(name)` (config field `eviction_policy`).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterator, Protocol, Sequence


class EvictionPolicy(Protocol):
    name: str

    def on_insert(self, key: str, size: int) -> None: ...

    def on_access(self, key: str) -> None: ...

    def on_remove(self, key: str) -> None: ...

    def hint_prefix(self, keys: Sequence[str]) -> None:
        """An ordered chain of prefix-block keys (block 0 first) seen in one call."""

    def victims(self) -> Iterator[str]:
        """Keys in eviction order, best victim first. The caller stops iterating
        before it removes anything, so implementations may iterate live state."""


class LRUPolicy:
    """Least recently used: the baseline."""

    name = "lru"

    def __init__(self) -> None:
        self._order: OrderedDict[str, None] = OrderedDict()

    def on_insert(self, key: str, size: int) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def on_access(self, key: str) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def on_remove(self, key: str) -> None:
        self._order.pop(key, None)

    def hint_prefix(self, keys: Sequence[str]) -> None:
        pass

    def victims(self) -> Iterator[str]:
        return iter(self._order)


POLICIES: dict[str, Callable[[], EvictionPolicy]] = {"lru": LRUPolicy}


def make_policy(name: str) -> EvictionPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        from ..errors import InvalidParams

        raise InvalidParams(f"eviction_policy: unknown policy {name!r}; "
                            f"choose one of {', '.join(sorted(POLICIES))}") from None
