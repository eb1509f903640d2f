"""Eviction policies: the order in which they offer victims."""
from __future__ import annotations

import itertools
import random
from collections import OrderedDict

import pytest

from mooncake_store import Config, InvalidParams
from mooncake_store.master import policy as policy_mod
from mooncake_store.master.policy import (POLICIES, LRUPolicy, PrefixLFRUPolicy,
                                          _GhostCounts, make_policy)

from support.policies import order, request


def test_make_policy_by_name_and_unknown_name():
    assert isinstance(make_policy("lru"), LRUPolicy)
    assert isinstance(make_policy("prefix-lfru"), PrefixLFRUPolicy)
    with pytest.raises(InvalidParams, match="unknown policy 'mru'.*lru"):
        make_policy("mru")


def test_default_policy_is_prefix_prune():
    assert Config().eviction_policy == "prefix-prune"
    assert set(POLICIES) >= {"lru", "prefix-lfru", "prefix-prune"}


def test_lru_evicts_least_recent_first():
    p = LRUPolicy()
    for k in "abc":
        p.on_insert(k, 1)
    p.on_access("a")
    assert order(p) == ["b", "c", "a"]
    p.on_remove("c")
    assert order(p) == ["b", "a"]


def test_victims_does_not_consume_state():
    p = PrefixLFRUPolicy()
    request(p, ["a", "b", "c"], 0)
    first = order(p)
    assert order(p) == first and sorted(first) == ["a", "b", "c"]


def test_chain_tail_goes_first_and_prefix_loses_its_tail_before_its_head():
    p = PrefixLFRUPolicy()
    request(p, ["r", "a1", "a2", "a3"], 0)
    # a3 ended the chain when written (a partial block that will not come back);
    # then the rest of the request deepest first, so "r" (the shared head) is last.
    assert order(p) == ["a3", "a2", "a1", "r"]


def test_older_request_goes_before_newer_one():
    p = PrefixLFRUPolicy()
    request(p, ["x0", "x1", "x2"], 0)
    request(p, ["y0", "y1", "y2"], 0)
    got = order(p)
    assert got[:2] == ["x2", "y2"]  # both tails first, oldest first
    assert got[2:] == ["x1", "x0", "y1", "y0"]


def test_a_block_used_by_several_requests_outlives_a_newer_single_use():
    p = PrefixLFRUPolicy(credit_scale=1.0)
    request(p, ["s", "q1", "t1"], 0)          # s: shared system prompt
    request(p, ["s", "q2", "t2"], 1)          # s used twice
    for i in range(3):                        # unrelated traffic ages everything
        request(p, [f"u{i}", f"v{i}", f"w{i}"], 0)
    got = [k for k in order(p) if not k.startswith(("t", "w"))]
    # q1 (older, once) goes before the once-used newer blocks; s, used twice, is
    # credited one lifetime and is the last victim of all.
    assert got[0] == "q1"
    assert got[-1] == "s"


def test_credit_zero_is_recency_with_leaf_first_ties():
    p = PrefixLFRUPolicy(credit_scale=0.0)
    request(p, ["s", "a", "b"], 0)
    request(p, ["s", "c", "d"], 1)
    assert order(p) == ["b", "d", "a", "c", "s"]


def test_access_counts_once_per_request_and_promotes():
    p = PrefixLFRUPolicy()
    request(p, ["s", "a", "b"], 0)
    # three calls of one request touch "s" (exists, get, get again): one use
    p.hint_prefix(["s", "a"])
    for _ in range(3):
        p.on_access("s")
    assert p.uses("s") == 1
    request(p, ["s", "a", "c"], 2)
    assert p.uses("s") == 2 and p.uses("a") == 2


def test_reused_tail_leaves_the_tail_class():
    p = PrefixLFRUPolicy(credit_scale=1.0)
    request(p, ["s", "a"], 0)                 # "a" is a tail
    request(p, ["s", "a", "b"], 2)            # ... but it was read again
    assert order(p)[0] == "b"
    assert order(p).index("a") > order(p).index("b")


def test_keys_outside_any_hint_behave_like_lru():
    p = PrefixLFRUPolicy()
    for k in "abcd":
        p.on_insert(k, 1)
    p.on_access("a")
    got = order(p)
    # "a" was used twice: it is credited and goes last; the others in age order
    assert got == ["b", "c", "d", "a"]


def test_remove_forgets_key_and_unknown_keys_are_ignored():
    p = PrefixLFRUPolicy()
    request(p, ["a", "b"], 0)
    p.on_remove("a")
    p.on_remove("zzz")
    p.on_access("zzz")
    assert order(p) == ["b"]


def test_negative_credit_scale_is_rejected():
    with pytest.raises(InvalidParams, match="credit_scale"):
        PrefixLFRUPolicy(credit_scale=-1)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_victims_is_a_permutation_of_live_keys(name):
    """Random-ish traffic: victims always lists exactly the live keys, once each."""
    p = make_policy(name)
    live: set[str] = set()
    counter = itertools.count()
    for r in range(200):
        n = 1 + r % 7
        base = r % 5
        keys = [f"k{base}-{i}" if i < 3 else f"k{r}-{i}" for i in range(n)]
        hits = 0
        for k in keys:
            if k not in live:
                break
            hits += 1
        request(p, keys, hits)
        live.update(keys)
        if next(counter) % 3 == 0:
            victim = next(iter(p.victims()))
            p.on_remove(victim)
            live.discard(victim)
        got = order(p)
        assert len(got) == len(set(got)) and set(got) == live


def test_a_block_back_after_eviction_resumes_its_use_count():
    p = PrefixLFRUPolicy(credit_scale=1.0)
    request(p, ["s", "a", "t1"], 0)
    request(p, ["s", "a", "t2"], 2)           # s and a used twice
    p.on_remove("a")                          # evicted ...
    request(p, ["s", "a", "t3"], 1)           # ... and needed again: third use
    assert p.uses("a") == 3
    for i in range(4):                        # newer once-used traffic
        request(p, [f"u{i}", f"u{i}x", f"u{i}t"], 0)
    got = order(p)
    # Without the remembered count "a" would be a once-used block older than
    # all of u*, and the first non-tail victim; with it, it outlives u0 and u1.
    assert got.index("u0x") < got.index("u1x") < got.index("a")


def test_ghost_counts_stay_bounded_by_cached_keys():
    p = PrefixLFRUPolicy()
    for i in range(500):
        request(p, [f"k{i}", f"k{i}x"], 0)
        for v in list(p.victims())[:2]:
            p.on_remove(v)
    # 16 one-byte cells per cached key, a power of two (at least 64), two generations.
    assert len(p) == 0 and p._ghost.nbytes() <= 2 * 64
    for i in range(50):
        request(p, [f"j{i}"], 0)
    for v in list(p.victims())[:10]:
        p.on_remove(v)
    assert len(p) == 40 and p._ghost.nbytes() <= 2 * 1024


def test_ghost_counts_remember_recent_drops_and_forget_old_ones():
    g = _GhostCounts()
    for i in range(1000):
        g.add(f"d{i}", 1 + i % 5, history=1000)
    assert [g.get(f"d{i}") for i in range(10)] == [1 + i % 5 for i in range(10)]
    assert g.get("d7") == 3
    g.add("d7", 9, history=1000)       # counts only grow
    assert g.get("d7") == 9
    unseen = sum(1 for i in range(2000) if g.get(f"never{i}"))
    assert unseen <= 40                 # collisions inflate ~1% of unknown keys
    for gen in range(2):                # two more cache-fulls of drops push "d7" out
        for i in range(1000):
            g.add(f"n{gen}_{i}", 1, history=1000)
    assert g.get("d7") == 0 or g.get("d7") == 1   # gone (or a collision with a count of 1)
    g.add("big", 10_000, history=1000)
    assert g.get("big") == 255


def test_queues_skip_evicted_keys_without_walking_them_again():
    # A plain dict keeps deleted slots until it resizes and iteration walks them, so
    # with evictions from the front every victims() call would grow with the cache
    # (measured: 12 -> 157 us per eviction at 200k keys; bench/policy_sim.py --cost).
    # The lazy queues move their head past stale entries once: chunks used up go.
    p = PrefixLFRUPolicy()
    for i in range(3000):
        request(p, [f"a{i}", f"b{i}", f"c{i}"], 0)
    tails = p._queues[p._DEAD]
    assert len(tails.chunks) == 3             # 3000 tails in chunks of 1024
    for i in range(2500):                     # tails first, oldest first
        assert next(iter(p.victims())) == f"c{i}"
        p.on_remove(f"c{i}")
    next(iter(p.victims()))
    assert len(tails.chunks) == 1 and tails.first.head == 2500 - 2048
    assert len(tails) == 500


def test_one_huge_batch_does_not_make_each_eviction_scan_it():
    p = PrefixLFRUPolicy()
    keys = [f"k{i}" for i in range(20000)]
    p.hint_prefix(keys)
    for k in keys:
        p.on_insert(k, 1)
    it = p.victims()
    assert next(it) == keys[-1]  # the tail
    # The rest of the run streams: the first victims come without a full sort,
    # and every key still comes out exactly once.
    rest = list(it)
    assert len(rest) == len(keys) - 1 and set(rest) == set(keys[:-1])
    assert rest[:PrefixLFRUPolicy._RUN_CAP] == sorted(
        keys[:PrefixLFRUPolicy._RUN_CAP], key=lambda k: -int(k[1:]))


class _ReferenceLFRU(PrefixLFRUPolicy):
    """The policy as it was with one OrderedDict per class and a dict of (tick, uses,
    depth, class) per key: the model the lazy chunked queues must match exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.ref_state: dict[str, tuple[int, int, int, int]] = {}
        self.ref_queues = [OrderedDict() for _ in range(self._MAX_CLASS + 1)]

    def on_insert(self, key, size):
        if key in self.ref_state:
            return self.on_access(key)
        tick, depth = self._now(key)
        uses = self._ghost.get(key) + 1
        cls = self._class_of(uses) if uses > 1 else (
            self._DEAD if key == self._tail and depth > 0 else self._ONCE)
        self.ref_state[key] = (tick, uses, depth, cls)
        self.ref_queues[cls][key] = None
        self._peak = max(self._peak, len(self.ref_state))

    def on_access(self, key):
        if key not in self.ref_state:
            return
        tick, depth = self._now(key)
        last, uses, _depth, cls = self.ref_state[key]
        del self.ref_queues[cls][key]
        uses += last != tick
        cls = self._class_of(uses)
        self.ref_state[key] = (tick, uses, depth, cls)
        self.ref_queues[cls][key] = None

    def on_remove(self, key):
        if key in self.ref_state:
            _tick, uses, _depth, cls = self.ref_state.pop(key)
            del self.ref_queues[cls][key]
            self._ghost.add(key, uses, max(1, self._peak))

    def victims(self):
        yield from self.ref_queues[self._DEAD]
        once = self.ref_queues[self._ONCE]
        heads = [self.ref_state[next(iter(q))][0] for q in self.ref_queues[1:] if q]
        oldest = self.ref_state[next(iter(once))][0] if once else min(heads, default=None)
        lifetime = 1 if oldest is None else max(1, self._tick - oldest)
        items = sorted((t + self.credit_scale * lifetime * (c - 1), -d, k)
                       for k, (t, _u, d, c) in self.ref_state.items() if c != self._DEAD)
        yield from (k for _p, _d, k in items)


class _Holder:
    __slots__ = ("key", "pol")

    def __init__(self, key: str) -> None:
        self.key, self.pol = key, None


@pytest.mark.parametrize("off_bits", [2, 10])
def test_lazy_queues_match_an_ordereddict_reference(monkeypatch, off_bits):
    """Random traffic (hinted requests, lone accesses, evictions from the front, removals
    from the middle) through the policy standalone, bound to an index-like dict of
    objects, and the OrderedDict reference: same victims in the same order throughout.
    Tiny chunks (4 entries) make every compaction and merge path run often."""
    monkeypatch.setattr(policy_mod, "_OFF_BITS", off_bits)
    monkeypatch.setattr(policy_mod, "_CHUNK", 1 << off_bits)
    rng = random.Random(off_bits)
    ref, alone, bound = _ReferenceLFRU(), PrefixLFRUPolicy(), PrefixLFRUPolicy()
    objects: dict[str, _Holder] = {}
    bound.bind(objects)
    everyone = (ref, alone, bound)
    live: set[str] = set()
    compactions = 0
    for step in range(3000):
        op = rng.random()
        if op < 0.45:                                   # a request over a small key space
            keys = [f"p{rng.randrange(40)}-{i}" for i in range(rng.randrange(1, 6))]
            hits = 0
            while hits < len(keys) and keys[hits] in live:
                hits += 1
            for k in keys[hits:]:
                objects.setdefault(k, _Holder(k))
            for p in everyone:
                request(p, keys, hits)
            live.update(keys)
        elif op < 0.65 and live:                        # evict the best victim
            victim = next(iter(ref.victims()))
            assert next(iter(alone.victims())) == victim
            assert next(iter(bound.victims())) == victim
            for p in everyone:
                p.on_remove(victim)
            del objects[victim]
            live.discard(victim)
        elif op < 0.8 and live:                         # a removal from anywhere
            k = rng.choice(sorted(live))
            for p in everyone:
                p.on_remove(k)
            del objects[k]
            live.discard(k)
        elif live:                                      # a lone read (its own request)
            k = rng.choice(sorted(live))
            for p in everyone:
                p.on_access(k)
        if step % 50 == 0:
            want = list(ref.victims())
            assert list(alone.victims()) == want and list(bound.victims()) == want
            assert len(alone) == len(bound) == len(live)
            for p in (alone, bound):
                for q, model in zip(p._queues, ref.ref_queues):   # same FIFO order per class
                    assert [k for k, _st in q.entries()] == list(model)
                    assert q.live == len(model)
                    ch = q.first
                    while ch is not None:
                        assert 0 <= ch.stale <= len(ch.keys) - ch.head
                        compactions += len(ch.keys) < (1 << off_bits) and ch is not q.last
                        ch = ch.next
    assert list(alone.victims()) == list(ref.victims()) == list(bound.victims())
    if off_bits == 2:
        assert compactions  # short chunks were made: the rewrite paths ran


def test_a_bound_policy_keeps_its_state_in_the_owners_objects():
    objects = {k: _Holder(k) for k in ("a", "b", "c")}
    p = PrefixLFRUPolicy()
    p.bind(objects)
    request(p, ["a", "b", "c"], 0)
    assert all(objects[k].pol is not None for k in "abc") and p._nodes is objects
    assert list(p.victims()) == ["c", "b", "a"]
    p.on_insert("zzz", 1)                 # not in the owner's dict: nothing to track
    assert len(p) == 3
    p.on_remove("b")
    assert objects["b"].pol is None and "b" in objects   # the owner deletes it
    with pytest.raises(ValueError, match="already tracks"):
        p.bind({})
