"""Eviction policies: which objects to give up first when space runs short.

A policy only orders keys; the index decides what may actually go (leases,
pins and in-flight writes are skipped there). Policies are chosen by name
with `make_policy(name)` (config field `eviction_policy`).
"""
from __future__ import annotations

import heapq
from collections import OrderedDict
from typing import Callable, Iterator, Protocol, Sequence

import xxhash


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


class PrefixLFRUPolicy:
    """Recency with a frequency credit, leaf-first, for prefix-structured KV caches.

    Every key carries the logical time (request number) it was last used and
    how many requests used it. Its eviction priority is

        last_use + k * lifetime * credit(uses)

    (lowest goes first), where `lifetime` is the current age of the oldest
    once-used key (so the credit scales with the cache and needs no capacity
    setting) and credit(1) = 0, credit(f) = log2(f). A block used by two
    requests is more than twice as likely to be used again as one used once,
    so it is kept proportionally longer. Ties (blocks of one request) go deepest
    first, so a prefix loses its tail before its head and no cached block is
    stranded behind an evicted parent. The block that ended a request's chain
    when it was written goes first of all: in a growing conversation the last
    block is partial and its id changes on the next turn, so it is almost
    never read again. The use counts of recently dropped keys are remembered
    (as many as there are cached keys), so a block that comes back after an
    eviction resumes its count: being needed again after eviction is the
    strongest sign that a block was worth keeping.

    Request boundaries, depths and chain tails come only from the order of keys
    in API calls (`hint_prefix`). Keys are held in one FIFO queue per frequency
    class (entries enter each queue in time order), so every call is O(1) and
    `victims` merges the queue heads.
    """

    name = "prefix-lfru"
    # How much longer (in lifetimes) a key used by twice as many requests stays.
    # Swept on the shipped conversation trace (docs/eviction.md): larger values
    # help small caches and start to cost at 20% of the distinct blocks.
    credit_scale = 0.7
    _DEAD, _ONCE = 0, 1
    _MAX_CLASS = 24
    _RUN_CAP = 512  # longer than any request of the shipped trace (247 blocks)

    def __init__(self, credit_scale: float | None = None) -> None:
        if credit_scale is not None:
            if not credit_scale >= 0:
                from ..errors import InvalidParams

                raise InvalidParams(f"credit_scale: must be >= 0, got {credit_scale!r}")
            self.credit_scale = float(credit_scale)
        # One FIFO per class: 0 = chain tails as written, 1 = used by one request,
        # c >= 2 = used by 2**(c-1) .. 2**c - 1 requests (credit c - 1 = floor(log2 uses)).
        # OrderedDicts, not plain dicts: a dict keeps the slots of deleted keys until it is
        # resized, and iterating from the front walks over every one of them, so with
        # evictions taken from the front each `victims` call grew with the number of keys
        # (157 us per eviction at 200k keys instead of 12 us). An OrderedDict unlinks.
        self._queues: list[OrderedDict[str, None]] = [OrderedDict()
                                                       for _ in range(self._MAX_CLASS + 1)]
        # key -> last_tick, uses, depth and class packed in one int (_pack/_unpack): one
        # int per key instead of a list of four (master index memory at millions of keys).
        self._state: dict[str, int] = {}
        self._tick = 0
        # The request in progress, as the last hinted chain: key -> depth.
        self._chain: dict[str, int] = {}
        self._chain_keys: list[str] = []
        self._tail: str | None = None
        # Use counts of recently dropped keys (at most as many as are cached): a
        # block that comes back after eviction resumes its count instead of
        # restarting as a once-used block.
        self._ghost = _GhostCounts()
        # The most keys cached so far sizes the ghost history. Not the current count: a
        # batch put evicts for all its keys before it inserts any, so the current count
        # dips by a batch and the history would depend on how a client batches its calls.
        self._peak = 0

    # ---- structure learned from calls --------------------------------------------------------
    def hint_prefix(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        start = self._chain.get(keys[0])
        if start is not None and self._chain_keys[start:start + len(keys)] == list(keys):
            return  # a slice of the request in progress (its get or its put)
        self._tick += 1
        self._chain_keys = list(keys)
        self._chain = {k: i for i, k in enumerate(self._chain_keys)}
        self._tail = self._chain_keys[-1]

    def _now(self, key: str) -> tuple[int, int]:
        """(tick, depth) of a touch; a key outside the hinted chain is a request of its own."""
        depth = self._chain.get(key)
        if depth is None:
            self._tick += 1
            self._chain, self._chain_keys, self._tail = {}, [], None
            return self._tick, 0
        return self._tick, depth

    @staticmethod
    def _pack(tick: int, uses: int, depth: int, cls: int) -> int:
        return ((tick << 40 | min(uses, _M40)) << 32 | min(depth, _M32)) << 5 | cls

    @staticmethod
    def _unpack(st: int) -> tuple[int, int, int, int]:
        """(last_tick, uses, depth, class) of a packed state."""
        return st >> 77, (st >> 37) & _M40, (st >> 5) & _M32, st & 31

    @staticmethod
    def _class_of(uses: int) -> int:
        return min(uses.bit_length(), PrefixLFRUPolicy._MAX_CLASS) if uses > 1 else 1

    # ---- protocol ----------------------------------------------------------------------------
    def on_insert(self, key: str, size: int) -> None:
        if key in self._state:  # an upsert: a use like any other
            self.on_access(key)
            return
        tick, depth = self._now(key)
        uses = self._ghost.get(key) + 1
        if uses > 1:
            cls = self._class_of(uses)
        else:
            cls = self._DEAD if key == self._tail and depth > 0 else self._ONCE
        self._state[key] = self._pack(tick, uses, depth, cls)
        self._queues[cls][key] = None
        if len(self._state) > self._peak:
            self._peak = len(self._state)

    def on_access(self, key: str) -> None:
        st = self._state.get(key)
        if st is None:
            return
        tick, depth = self._now(key)
        queues = self._queues
        del queues[st & 31][key]
        uses = (st >> 37) & _M40     # the _unpack fields, inline on this hot path
        if st >> 77 != tick:  # count each request once, however many calls it makes
            uses += 1
        cls = self._class_of(uses)
        if uses > _M40 or depth > _M32:
            self._state[key] = self._pack(tick, uses, depth, cls)
        else:   # _pack without its clamps
            self._state[key] = ((tick << 40 | uses) << 32 | depth) << 5 | cls
        queues[cls][key] = None

    def on_remove(self, key: str) -> None:
        st = self._state.pop(key, None)
        if st is not None:
            _tick, uses, _depth, cls = self._unpack(st)
            del self._queues[cls][key]
            self._ghost.add(key, uses, max(1, self._peak))

    def victims(self) -> Iterator[str]:
        yield from self._queues[self._DEAD]
        lifetime = self._lifetime()
        runs = [self._ordered(cls, self.credit_scale * lifetime * (cls - 1))
                for cls in range(self._ONCE, self._MAX_CLASS + 1) if self._queues[cls]]
        for _prio, _neg_depth, key in heapq.merge(*runs):
            yield key

    # ---- helpers -----------------------------------------------------------------------------
    def _lifetime(self) -> int:
        """Age of the oldest once-used key (else of the oldest key), at least 1."""
        once = self._queues[self._ONCE]
        if once:
            return max(1, self._tick - (self._state[next(iter(once))] >> 77))
        heads = [self._state[next(iter(q))] >> 77 for q in self._queues[1:] if q]
        return max(1, self._tick - min(heads)) if heads else 1

    def _ordered(self, cls: int, credit: float) -> Iterator[tuple[float, int, str]]:
        """One queue in eviction order: by time, and within one request deepest first.
        Lazy: only the runs the caller reaches are sorted, and a run longer than
        _RUN_CAP keys (a huge batch) streams in queue order, so a call costs at
        most _RUN_CAP steps before its first victim."""
        state = self._state
        run: list[tuple[float, int, str]] = []
        run_tick = None
        streaming = False
        for key in self._queues[cls]:
            tick, _uses, depth, _cls = self._unpack(state[key])
            if tick != run_tick:
                run.sort()
                yield from run
                run, run_tick, streaming = [], tick, False
            item = (tick + credit, -depth, key)
            if streaming:
                yield item
                continue
            run.append(item)
            if len(run) >= self._RUN_CAP:
                run.sort()
                yield from run
                run, streaming = [], True
        run.sort()
        yield from run


_M32, _M40 = (1 << 32) - 1, (1 << 40) - 1   # depth and use-count fields of a packed state

class _GhostCounts:
    """Use counts of recently dropped keys, approximately, in 32-64 bytes per cached key.

    An exact table (key -> count, FIFO) cost ~200 bytes per dropped key with its key
    string. Here a count lives in 3 byte cells picked by a hash of the key (each cell
    keeps the largest count written to it; a lookup takes the smallest of its 3, so
    a collision can only inflate a count, and does for ~1% of keys never seen). Two
    generations: once the current one has taken as many keys as are cached it becomes
    the old one, so the history spans the last 1-2 cache-fulls of drops. Counts cap
    at 255. Deterministic: the hash is xxh3 of the key, not Python's salted hash().
    """

    _WAYS = 3
    _CELLS_PER_KEY = 16     # ~17% of cells set per generation: 0.5% false matches

    def __init__(self) -> None:
        self._cur = bytearray(64)
        self._old = bytearray(64)
        self._taken = 0       # keys written to the current generation
        self._quota = 1       # keys a generation takes before it turns old

    @staticmethod
    def _cells(h: int, size: int) -> tuple[int, int, int]:
        mask, step = size - 1, (h >> 32) | 1
        return h & mask, (h + step) & mask, (h + 2 * step) & mask

    def add(self, key: str, uses: int, history: int) -> None:
        """Remember the count of a dropped key; a generation holds `history` drops."""
        if self._taken >= self._quota:
            size = 64
            while size < self._CELLS_PER_KEY * history:
                size <<= 1
            self._old, self._cur = self._cur, bytearray(size)
            self._taken, self._quota = 0, history
        cur, u = self._cur, min(uses, 255)
        for i in self._cells(xxhash.xxh3_64_intdigest(key.encode()), len(cur)):
            if cur[i] < u:
                cur[i] = u
        self._taken += 1

    def get(self, key: str) -> int:
        """The remembered count of `key`, 0 when it was not dropped recently."""
        h = xxhash.xxh3_64_intdigest(key.encode())
        best = 0
        for gen in (self._cur, self._old):
            a, b, c = self._cells(h, len(gen))
            best = max(best, min(gen[a], gen[b], gen[c]))
        return best

    def nbytes(self) -> int:
        return len(self._cur) + len(self._old)


POLICIES: dict[str, Callable[[], EvictionPolicy]] = {"lru": LRUPolicy,
                                                     "prefix-lfru": PrefixLFRUPolicy}


def make_policy(name: str) -> EvictionPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        from ..errors import InvalidParams

        raise InvalidParams(f"eviction_policy: unknown policy {name!r}; "
                            f"choose one of {', '.join(sorted(POLICIES))}") from None

from .policy_prune import PrefixPrunePolicy  # noqa: E402  (imports _GhostCounts from here)

POLICIES["prefix-prune"] = PrefixPrunePolicy
