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


class RequestChains:
    """What the prefix-aware policies share: the request in progress, learned from
    hint_prefix (a tick per request and each key's depth in it), the credit scale,
    the frequency classes and the class a newly inserted key starts in."""

    # How much longer (in lifetimes) a key used by twice as many requests stays.
    # Swept on the shipped conversation trace (docs/eviction.md): larger values
    # help small caches and start to cost at 20% of the distinct blocks.
    credit_scale = 0.7
    _DEAD, _ONCE = 0, 1
    _MAX_CLASS = 24
    _RUN_CAP = 512  # longer than any request of the shipped trace (247 blocks)
    _ghost: "_GhostCounts"

    def __init__(self, credit_scale: float | None = None) -> None:
        if credit_scale is not None:
            if not credit_scale >= 0:
                from ..errors import InvalidParams

                raise InvalidParams(f"credit_scale: must be >= 0, got {credit_scale!r}")
            self.credit_scale = float(credit_scale)
        self._tick = 0
        # The request in progress, as the last hinted chain: key -> depth.
        self._chain: dict[str, int] = {}
        self._chain_keys: list[str] = []
        self._tail: str | None = None

    @classmethod
    def _class_of(cls, uses: int) -> int:
        return min(uses.bit_length(), cls._MAX_CLASS) if uses > 1 else cls._ONCE

    def _entry(self, key: str) -> tuple[int, int, int, int]:
        """(tick, uses, depth, class) of a key being inserted: its ghost count resumes,
        and the tail of the chain as written goes with the dead."""
        tick, depth = self._now(key)
        uses = self._ghost.get(key) + 1
        if uses > 1:
            return tick, uses, depth, self._class_of(uses)
        return tick, uses, depth, self._DEAD if key == self._tail and depth > 0 else self._ONCE

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


class PrefixLFRUPolicy(RequestChains):
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

    Per-key state is one packed int in a node's `pol` slot: the policy's own small
    nodes, or, once an index calls `bind(objects)`, the index's entries themselves,
    so the master keeps one dict of keys, not two (index memory at millions of keys).
    """

    name = "prefix-lfru"

    def __init__(self, credit_scale: float | None = None) -> None:
        super().__init__(credit_scale)
        # key -> node whose `pol` holds the packed state (_pack), None while untracked.
        self._nodes: dict = {}
        self._bound = False
        self._live = 0
        # One FIFO per class: 0 = chain tails as written, 1 = used by one request,
        # c >= 2 = used by 2**(c-1) .. 2**c - 1 requests (credit c - 1 = floor(log2 uses)).
        # Lazy queues of key refs (8-10 bytes a key; an OrderedDict cost ~80), see _Fifo.
        self._queues = [_Fifo(c, self._nodes) for c in range(self._MAX_CLASS + 1)]
        # Use counts of recently dropped keys (at most as many as are cached): a
        # block that comes back after eviction resumes its count instead of
        # restarting as a once-used block.
        self._ghost = _GhostCounts()
        # The most keys cached so far sizes the ghost history. Not the current count: a
        # batch put evicts for all its keys before it inserts any, so the current count
        # dips by a batch and the history would depend on how a client batches its calls.
        self._peak = 0

    def bind(self, nodes: dict) -> None:
        """Keep the per-key state in `nodes` (key -> an object with `key` and `pol`
        slots, pol None while the key is not tracked) instead of in nodes of our own.
        The owner adds a key's node before on_insert, removes it only after on_remove,
        and hands the `pol` of a replaced node to its successor. Only an empty policy
        can be bound."""
        if self._nodes:
            raise ValueError("bind: the policy already tracks keys")
        self._nodes, self._bound = nodes, True
        for q in self._queues:
            q.nodes = nodes

    def __len__(self) -> int:
        return self._live

    def uses(self, key: str) -> int:
        """How many requests used a tracked key (0: not tracked)."""
        node = self._nodes.get(key)
        st = None if node is None else node.pol
        return 0 if st is None else (st >> _USES_SHIFT) & _M24

    @staticmethod
    def _pack(tick: int, uses: int, depth: int, cls: int, seq: int) -> int:
        # Uses saturate at 2**24 - 1: every count from 2**23 up is class 24 anyway.
        return (((tick << 32 | seq) << 24 | min(uses, _M24)) << 32 | min(depth, _M32)) << 5 | cls

    @staticmethod
    def _unpack(st: int) -> tuple[int, int, int, int]:
        """(last_tick, uses, depth, class) of a packed state."""
        return st >> _TICK_SHIFT, (st >> _USES_SHIFT) & _M24, (st >> 5) & _M32, st & 31

    # ---- protocol ----------------------------------------------------------------------------
    def on_insert(self, key: str, size: int) -> None:
        node = self._nodes.get(key)
        if node is None:
            if self._bound:
                return  # the owner did not add the key: nothing to keep the state in
            node = self._nodes[key] = _Node(key)
        elif node.pol is not None:  # an upsert: a use like any other
            self.on_access(key)
            return
        tick, uses, depth, cls = self._entry(key)
        # The queues hold node.key, the owner's own string: a caller's equal copy (each
        # RPC decodes its keys anew) would keep a second copy of the key text alive.
        node.pol = self._pack(tick, uses, depth, cls, self._queues[cls].append(node.key))
        self._live += 1
        if self._live > self._peak:
            self._peak = self._live

    def on_access(self, key: str) -> None:
        node = self._nodes.get(key)
        if node is None:
            return
        st = node.pol
        if st is None:
            return
        tick, depth = self._now(key)
        uses = (st >> _USES_SHIFT) & _M24     # the _unpack fields, inline on this hot path
        if st >> _TICK_SHIFT != tick:  # count each request once, however many calls it makes
            uses += 1
        cls = self._class_of(uses)
        seq = self._queues[cls].append(node.key)   # the owner's string, not the caller's
        if uses > _M24 or depth > _M32:
            node.pol = self._pack(tick, uses, depth, cls, seq)
        else:   # _pack without its clamps
            node.pol = (((tick << 32 | seq) << 24 | uses) << 32 | depth) << 5 | cls
        # After the new state is in place: the old entry is stale from here on.
        self._queues[st & 31].drop((st >> _SEQ_SHIFT) & _M32)

    def on_remove(self, key: str) -> None:
        node = self._nodes.get(key)
        if node is None or node.pol is None:
            return
        st, node.pol = node.pol, None
        if not self._bound:
            del self._nodes[key]
        self._live -= 1
        self._queues[st & 31].drop((st >> _SEQ_SHIFT) & _M32)
        self._ghost.add(key, (st >> _USES_SHIFT) & _M24, max(1, self._peak))

    def victims(self) -> Iterator[str]:
        dead = self._queues[self._DEAD]
        if dead.live:
            for key, _st in dead.entries():
                yield key
        lifetime = self._lifetime()
        runs = [self._ordered(cls, self.credit_scale * lifetime * (cls - 1))
                for cls in range(self._ONCE, self._MAX_CLASS + 1) if self._queues[cls].live]
        for _prio, _neg_depth, key in heapq.merge(*runs):
            yield key

    # ---- helpers -----------------------------------------------------------------------------
    def _lifetime(self) -> int:
        """Age of the oldest once-used key (else of the oldest key), at least 1."""
        once = self._queues[self._ONCE].first_state()
        if once is not None:
            return max(1, self._tick - (once >> _TICK_SHIFT))
        heads = [st >> _TICK_SHIFT for st in map(_Fifo.first_state, self._queues[1:])
                 if st is not None]
        return max(1, self._tick - min(heads)) if heads else 1

    def _ordered(self, cls: int, credit: float) -> Iterator[tuple[float, int, str]]:
        """One queue in eviction order: by time, and within one request deepest first.
        Lazy: only the runs the caller reaches are sorted, and a run longer than
        _RUN_CAP keys (a huge batch) streams in queue order, so a call costs at
        most _RUN_CAP steps before its first victim. (The queue's live entries are
        walked here rather than through _Fifo.entries: one generator less per key
        on the eviction path.)"""
        q = self._queues[cls]
        q.trim()
        nodes = self._nodes
        run: list[tuple[float, int, str]] = []
        run_tick = None
        streaming = False
        ch = q.first
        while ch is not None:
            keys, base = ch.keys, ch.cid << _OFF_BITS
            for i in range(ch.head, len(keys)):
                key = keys[i]
                node = nodes.get(key)
                st = None if node is None else node.pol
                if st is None or st & 31 != cls or (st >> _SEQ_SHIFT) & _M32 != base | i:
                    continue   # a stale entry (the key moved on, or left)
                tick = st >> _TICK_SHIFT
                if tick != run_tick:
                    run.sort()
                    yield from run
                    run, run_tick, streaming = [], tick, False
                item = (tick + credit, -((st >> 5) & _M32), key)
                if streaming:
                    yield item
                    continue
                run.append(item)
                if len(run) >= self._RUN_CAP:
                    run.sort()
                    yield from run
                    run, streaming = [], True
            ch = ch.next
        run.sort()
        yield from run


# Packed state, low bits first: class (5) | depth (32) | uses (24) | seq (32) | tick (the rest).
_M22, _M24, _M32 = (1 << 22) - 1, (1 << 24) - 1, (1 << 32) - 1
_USES_SHIFT, _SEQ_SHIFT, _TICK_SHIFT = 37, 61, 93
# seq = chunk id (22 bits) | offset in the chunk (10 bits).
_OFF_BITS = 10
_CHUNK = 1 << _OFF_BITS


class _Node:
    """A standalone policy's per-key holder (an index's objects play this part when bound)."""

    __slots__ = ("key", "pol")

    def __init__(self, key: str) -> None:
        self.key = key
        self.pol: int | None = None


class _Chunk:
    __slots__ = ("keys", "cid", "head", "stale", "prev", "next")

    def __init__(self, cid: int) -> None:
        self.keys: list[str] = []
        self.cid = cid
        self.head = 0        # entries before it are known stale
        self.stale = 0       # stale entries at or after head
        self.prev: _Chunk | None = None
        self.next: _Chunk | None = None


class _Fifo:
    """The keys of one class in the order they last entered it, removal lazy.

    An OrderedDict costs ~80 bytes a key; a plain dict keeps the slots of deleted
    keys until it resizes, so iterating from the front after evictions walks all of
    them (157 us per eviction at 200k keys). Here a queue is a linked list of
    chunks of up to 1024 key refs. An entry is live while its key's packed state
    names this class and this slot (seq = chunk id | offset); leaving the queue only
    counts the entry as stale in its chunk. Iteration skips stale entries, the head
    chunk's start moves past them, and a chunk whose stale entries outnumber its live
    ones is rewritten (its live keys renumbered) and merged with a neighbour when
    both fit in one: every step touches at most two chunks, so no call pays for the
    whole queue, and stale entries stay at most about as many as live ones.
    """

    __slots__ = ("cls", "nodes", "first", "last", "chunks", "live", "_next_cid", "_trimmed")

    def __init__(self, cls: int, nodes: dict) -> None:
        self.cls = cls
        self.nodes = nodes
        self.first: _Chunk | None = None
        self.last: _Chunk | None = None
        self.chunks: dict[int, _Chunk] = {}
        self.live = 0
        self._next_cid = 0
        self._trimmed = True   # the head entry is live (or the queue has no chunk)

    def __len__(self) -> int:
        return self.live

    # ---- changes -------------------------------------------------------------------------------
    def append(self, key: str) -> int:
        """Add key at the end; returns its seq (the caller stores it in the key's state)."""
        last = self.last
        if last is None or len(last.keys) >= _CHUNK:
            last = self._new_chunk()
        last.keys.append(key)
        self.live += 1
        return last.cid << _OFF_BITS | (len(last.keys) - 1)

    def drop(self, seq: int) -> None:
        """The entry at seq went stale (its key's state already says so)."""
        self.live -= 1
        ch = self.chunks[seq >> _OFF_BITS]
        ch.stale += 1
        if ch is self.first and seq & (_CHUNK - 1) == ch.head:
            self._trimmed = False
        if ch.stale * 2 > len(ch.keys) - ch.head:
            self._compact(ch)

    # ---- reading -------------------------------------------------------------------------------
    def entries(self) -> Iterator[tuple[str, int]]:
        """(key, packed state) of the live entries, oldest first."""
        self.trim()
        nodes, cls = self.nodes, self.cls
        ch = self.first
        while ch is not None:
            keys, base = ch.keys, ch.cid << _OFF_BITS
            for i in range(ch.head, len(keys)):
                key = keys[i]
                node = nodes.get(key)
                if node is None:
                    continue
                st = node.pol
                if st is not None and st & 31 == cls and (st >> _SEQ_SHIFT) & _M32 == base | i:
                    yield key, st
            ch = ch.next

    def first_state(self) -> int | None:
        """Packed state of the oldest live entry, None when there is none."""
        if not self.live:
            return None
        self.trim()
        ch = self.first
        return None if ch is None else self._state_at(ch, ch.head)

    # ---- internals -----------------------------------------------------------------------------
    def _state_at(self, ch: _Chunk, i: int) -> int | None:
        """The key's state when the entry at (ch, i) is live, else None."""
        node = self.nodes.get(ch.keys[i])
        st = None if node is None else node.pol
        if st is not None and st & 31 == self.cls \
                and (st >> _SEQ_SHIFT) & _M32 == (ch.cid << _OFF_BITS | i):
            return st
        return None

    def trim(self) -> None:
        """Move the head past stale entries; drop chunks used up."""
        if self._trimmed:
            return
        self._trimmed = True
        ch = self.first
        while ch is not None:
            i, n = ch.head, len(ch.keys)
            while i < n and self._state_at(ch, i) is None:
                i += 1
            # (max: an owner that deleted a bound object without on_remove left an
            # entry that never counted as stale; it is skipped all the same)
            ch.stale = max(0, ch.stale - (i - ch.head))
            ch.head = i
            if i < n:
                return
            nxt = ch.next
            self._unlink(ch)
            ch = nxt

    def _new_chunk(self) -> _Chunk:
        cid = self._next_cid
        for _ in range(len(self.chunks) + 1):   # ids wrap: skip one still in use
            if cid not in self.chunks:
                break
            cid = (cid + 1) & _M22
        else:
            raise RuntimeError("eviction queue: out of chunk ids")
        self._next_cid = (cid + 1) & _M22
        ch = self.chunks[cid] = _Chunk(cid)
        ch.prev = self.last
        if self.last is None:
            self.first = ch
        else:
            self.last.next = ch
        self.last = ch
        return ch

    def _unlink(self, ch: _Chunk) -> None:
        del self.chunks[ch.cid]
        if ch.prev is None:
            self.first = ch.next
        else:
            ch.prev.next = ch.next
        if ch.next is None:
            self.last = ch.prev
        else:
            ch.next.prev = ch.prev

    def _compact(self, ch: _Chunk) -> None:
        """Rewrite ch without its stale entries, then merge it with a neighbour that fits."""
        self._trimmed = False   # heads and chunks move: the next reader looks again
        self._rewrite(ch, ch, 0)
        prev, nxt = ch.prev, ch.next
        if prev is not None and len(prev.keys) - prev.stale - prev.head + len(ch.keys) <= _CHUNK:
            self._rewrite(prev, prev, 0)
            self._rewrite(ch, prev, len(prev.keys))
            self._unlink(ch)
        elif nxt is not None and len(nxt.keys) - nxt.stale - nxt.head + len(ch.keys) <= _CHUNK:
            self._rewrite(nxt, ch, len(ch.keys))
            self._unlink(nxt)
        elif not ch.keys:
            self._unlink(ch)

    def _rewrite(self, src: _Chunk, dst: _Chunk, at: int) -> None:
        """The live entries of src go to dst from offset `at` on (dst may be src itself,
        then at is 0); the keys' states follow. Stale entries are left behind."""
        nodes, cls = self.nodes, self.cls
        base, dbase = src.cid << _OFF_BITS, dst.cid << _OFF_BITS
        keep: list[str] = []
        clear = ~(_M32 << _SEQ_SHIFT)
        for i in range(src.head, len(src.keys)):
            key = src.keys[i]
            node = nodes.get(key)
            st = None if node is None else node.pol
            if st is not None and st & 31 == cls and (st >> _SEQ_SHIFT) & _M32 == base | i:
                node.pol = st & clear | (dbase | (at + len(keep))) << _SEQ_SHIFT
                keep.append(key)
        if dst is src:
            src.keys, src.head, src.stale = keep, 0, 0
        else:
            dst.keys.extend(keep)
            src.keys, src.head, src.stale = [], 0, 0


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

from .policy_prune import PrefixPrunePolicy  # noqa: E402  (it imports PrefixLFRUPolicy from here)

POLICIES["prefix-prune"] = PrefixPrunePolicy
