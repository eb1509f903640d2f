"""`prefix-prune`: prefix-lfru that also drops the branches a conversation abandons.

When a request shares a cached prefix with an earlier request and then goes
elsewhere *before* that request's end (an edited or regenerated turn: same
history, different message), the rest of the earlier request's chain is
passed over. On the shipped conversation trace 0.7% of the blocks of such
passed-over branches are used again (113 of 15,995) when the branch point is
a conversation's own block, against 24% for a block used once in general.
So at the moment a request branches, the keys of the passed-over branch go
to the queue that is evicted first (with the chain tails), where they would
otherwise have waited a whole lifetime.

A branch point shared by many requests (a system prompt every conversation
starts with) is not a conversation's own block: there the requests before
went to many different children, and the previous one's chain is as likely
to come back as any other (44% on the trace). The rule tells them apart by
use counts: the branch point must have been used by exactly as many requests
as the child it leaves, i.e. no request ever left this line before. (So the
first request to leave a shared prefix prunes its predecessor's line once,
and never again.) The keys dropped are exactly those the earlier request
touched last: its keys deeper than the branch point that no later request used.

Everything else (priority = last use + credit for uses, leaf-first runs,
chain tails first, ghost counts) is prefix-lfru's: PrefixPrunePolicy is
PrefixLFRUPolicy (`policy.py`, state packed in the index's own entries) plus
the branch rule. To find a passed-over branch it keeps, for every request that
is still the last user of some cached key, a count of such keys and the keys
it touched by depth (the index's own strings, so no caller's copy of a key
stays alive): one list slot per cached key, since a list dies when its keys
are used again or evicted. PrefixPruneReference is the same policy written
plainly, with state of its own; tests check the two evict alike.
"""
from __future__ import annotations

import heapq
from collections import OrderedDict
from typing import Iterator

from .policy import (_M24, _M32, _SEQ_SHIFT, _TICK_SHIFT, _USES_SHIFT, PrefixLFRUPolicy,
                     RequestChains, _GhostCounts)

_M40 = (1 << 40) - 1


def _disown(reqs: dict[int, list], tick: int) -> None:
    """One cached key fewer has request `tick` as its last user; its list goes at none.
    (Both implementations keep the count first in a request's list.)"""
    entry = reqs.get(tick)
    if entry is not None:
        entry[0] -= 1
        if entry[0] <= 0:
            del reqs[tick]


class PrefixPruneReference(RequestChains):
    """prefix-prune written plainly, with state of its own (a dict of packed ints and one
    OrderedDict per class): the model PrefixPrunePolicy is checked against, and the base
    of bench/hawkeye_sim.py. Not registered as a policy."""

    name = "prefix-prune-reference"

    def __init__(self, credit_scale: float | None = None) -> None:
        super().__init__(credit_scale)
        # Class 0: dead (chain tails as written, passed-over branches); 1: used by one
        # request; c >= 2: used by 2**(c-1) .. 2**c - 1 requests. FIFO each, in time order.
        self._queues: list[OrderedDict[str, None]] = [OrderedDict()
                                                       for _ in range(self._MAX_CLASS + 1)]
        self._state: dict[str, int] = {}   # key -> packed (last tick, uses, depth, class)
        # tick -> [number of cached keys whose last use is that request, its key list]
        self._reqs: dict[int, list] = {}
        self._ghost = _GhostCounts()
        self._peak = 0
        self.pruned = 0   # keys moved to the dead queue as passed-over (for benches)

    @staticmethod
    def _pack(tick: int, uses: int, depth: int, cls: int) -> int:
        return ((tick << 40 | min(uses, _M40)) << 32 | min(depth, _M32)) << 5 | cls

    @staticmethod
    def _unpack(st: int) -> tuple[int, int, int, int]:
        return st >> 77, (st >> 37) & _M40, (st >> 5) & _M32, st & 31

    # ---- who used a key last ----------------------------------------------------------------
    def _own(self, tick: int) -> None:
        """A cached key's last use is now request `tick` (of the chain in progress)."""
        entry = self._reqs.get(tick)
        if entry is None:
            if not self._chain_keys:
                return  # a key touched outside any chain: no list to keep
            entry = self._reqs[tick] = [0, self._chain_keys]
        entry[0] += 1

    def _disown(self, tick: int) -> None:
        _disown(self._reqs, tick)

    # ---- protocol ----------------------------------------------------------------------------
    def on_insert(self, key: str, size: int) -> None:
        if key in self._state:  # an upsert: a use like any other
            self.on_access(key)
            return
        tick, uses, depth, cls = self._entry(key)
        self._state[key] = self._pack(tick, uses, depth, cls)
        self._queues[cls][key] = None
        self._own(tick)
        if len(self._state) > self._peak:
            self._peak = len(self._state)

    def on_access(self, key: str) -> None:
        st = self._state.get(key)
        if st is None:
            return
        tick, depth = self._now(key)
        last, uses, _depth, cls = self._unpack(st)
        if last != tick:
            if depth + 1 < len(self._chain_keys):
                self._prune_branch(key, last, uses, depth)
            uses += 1  # count each request once, however many calls it makes
            self._disown(last)
            self._own(tick)
        del self._queues[cls][key]
        cls = self._class_of(uses)
        self._state[key] = self._pack(tick, uses, depth, cls)
        self._queues[cls][key] = None

    def on_remove(self, key: str) -> None:
        st = self._state.pop(key, None)
        if st is not None:
            tick, uses, _depth, cls = self._unpack(st)
            del self._queues[cls][key]
            self._disown(tick)
            self._ghost.add(key, uses, max(1, self._peak))

    def victims(self) -> Iterator[str]:
        yield from self._queues[self._DEAD]
        lifetime = self._lifetime()
        runs = [self._ordered(cls, self.credit_scale * lifetime * (cls - 1))
                for cls in range(self._ONCE, self._MAX_CLASS + 1) if self._queues[cls]]
        for _prio, _neg_depth, key in heapq.merge(*runs):
            yield key

    # ---- passed-over branches ----------------------------------------------------------------
    def _prune_branch(self, key: str, last: int, uses: int, depth: int) -> None:
        """`key` (at `depth`) is read by the request in progress, which goes on to a
        different next key than the request that used `key` last: the keys that
        request touched last below `key` are passed over, if `key` is a conversation's
        own block (used by as many requests as the child it leaves)."""
        entry = self._reqs.get(last)
        if entry is None:
            return
        old = entry[1]
        nxt = self._chain_keys[depth + 1]
        if len(old) <= depth + 1 or old[depth] != key or old[depth + 1] == nxt:
            return
        child = self._state.get(old[depth + 1])
        if child is None or child >> 77 != last or (child >> 37) & _M40 != uses:
            return
        state, queues = self._state, self._queues
        for k in old[depth + 1:]:   # bounded by one request's length
            st = state.get(k)
            if st is None or st >> 77 != last:
                continue  # evicted, or used again since by a request of its own
            cls = st & 31
            if cls != self._DEAD:
                del queues[cls][k]
                state[k] = st - cls   # same fields, class 0
                queues[self._DEAD][k] = None
                self.pruned += 1

    # ---- helpers -----------------------------------------------------------------------------
    def _lifetime(self) -> int:
        """Age of the oldest once-used key (else of the oldest key), at least 1."""
        once = self._queues[self._ONCE]
        if once:
            return max(1, self._tick - (self._state[next(iter(once))] >> 77))
        heads = [self._state[next(iter(q))] >> 77 for q in self._queues[1:] if q]
        return max(1, self._tick - min(heads)) if heads else 1

    def _ordered(self, cls: int, credit: float) -> Iterator[tuple[float, int, str]]:
        """One queue in eviction order: by time, within one request deepest first;
        a run longer than _RUN_CAP keys streams in queue order."""
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


class PrefixPrunePolicy(PrefixLFRUPolicy):
    """prefix-lfru plus pruning of passed-over branches (module docstring), in
    prefix-lfru's compact layout."""

    name = "prefix-prune"

    def __init__(self, credit_scale: float | None = None) -> None:
        super().__init__(credit_scale)
        # tick -> [n, key at depth 0, key at depth 1, ...]: n cached keys' last use is that
        # request, and its keys as the index holds them (None where it touched none). One
        # list a request: at 1M keys in requests of 16, 20 bytes a key.
        self._reqs: dict[int, list] = {}
        self.pruned = 0   # keys moved to the dead queue as passed-over (for benches)

    # ---- who used a key last ----------------------------------------------------------------
    def _own(self, st: int, key: str) -> None:
        """A cached key (packed state st, the index's own string) was last used by the
        request in progress."""
        if not self._chain_keys:
            return  # a key touched outside any chain: no list to keep
        tick, depth = st >> _TICK_SHIFT, (st >> 5) & _M32
        entry = self._reqs.get(tick)
        if entry is None:
            entry = self._reqs[tick] = [0] + [None] * len(self._chain_keys)
        entry[0] += 1
        if depth + 1 < len(entry):
            entry[depth + 1] = key

    def _disown(self, tick: int) -> None:
        _disown(self._reqs, tick)

    # ---- protocol ----------------------------------------------------------------------------
    def on_insert(self, key: str, size: int) -> None:
        node = self._nodes.get(key)
        if node is not None and node.pol is not None:   # an upsert: a use like any other
            self.on_access(key)
            return
        super().on_insert(key, size)
        node = self._nodes.get(key)
        if node is not None and node.pol is not None:
            self._own(node.pol, node.key)

    def on_access(self, key: str) -> None:
        node = self._nodes.get(key)
        st = None if node is None else node.pol
        if st is None:
            return
        last = st >> _TICK_SHIFT
        depth = self._chain.get(key)   # as _now sees it, without its side effect
        if depth is not None and last != self._tick and depth + 1 < len(self._chain_keys):
            self._prune_branch(key, last, (st >> _USES_SHIFT) & _M24, depth)
        super().on_access(key)
        now = node.pol
        if now >> _TICK_SHIFT != last:
            self._disown(last)
            self._own(now, node.key)

    def on_remove(self, key: str) -> None:
        node = self._nodes.get(key)
        st = None if node is None else node.pol
        super().on_remove(key)
        if st is not None:
            self._disown(st >> _TICK_SHIFT)

    # ---- passed-over branches ----------------------------------------------------------------
    def _prune_branch(self, key: str, last: int, uses: int, depth: int) -> None:
        """As PrefixPruneReference._prune_branch: the keys request `last` touched last
        below `key` go to the dead queue when the request in progress leaves its line
        there and `key` is a conversation's own block."""
        entry = self._reqs.get(last)
        if entry is None:
            return
        nodes = self._nodes
        here, below = depth + 1, depth + 2   # positions in entry of key and of its child
        if len(entry) <= below or entry[here] != key \
                or entry[below] in (None, self._chain_keys[depth + 1]):
            return
        child = nodes.get(entry[below])
        st = None if child is None else child.pol
        if st is None or st >> _TICK_SHIFT != last or (st >> _USES_SHIFT) & _M24 != uses:
            return
        dead = self._queues[self._DEAD]
        for k in entry[below:]:   # bounded by one request's length
            node = None if k is None else nodes.get(k)
            st = None if node is None else node.pol
            if st is None or st >> _TICK_SHIFT != last or st & 31 == self._DEAD:
                continue  # evicted, used again since by a request of its own, or dead already
            seq = dead.append(node.key)
            node.pol = (st & ~((_M32 << _SEQ_SHIFT) | 31)) | seq << _SEQ_SHIFT
            self._queues[st & 31].drop((st >> _SEQ_SHIFT) & _M32)
            self.pruned += 1
