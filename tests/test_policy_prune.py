"""prefix-prune: prefix-lfru that evicts the branches a conversation abandons first.

The rules are checked on both implementations: PrefixPrunePolicy (prefix-lfru's compact
layout, the registered one) and PrefixPruneReference (the same policy written plainly);
then the two are checked to evict alike, key for key."""
from __future__ import annotations

import os
import random

import pytest

from mooncake_store.master.policy import _TICK_SHIFT, POLICIES, PrefixLFRUPolicy, make_policy
from mooncake_store.master.policy_prune import PrefixPrunePolicy, PrefixPruneReference
from mooncake_store.trace import capacity_blocks, load_trace, replay, simulate_policy

from support.policies import order, request

HEAD300 = os.path.join(os.path.dirname(__file__), "data", "conversation_trace_head300.jsonl")
BOTH = pytest.mark.parametrize("impl", [PrefixPrunePolicy, PrefixPruneReference])


def _dead(p) -> list[str]:
    """The dead queue (evicted first), oldest first."""
    if isinstance(p, PrefixPruneReference):
        return list(p._queues[p._DEAD])
    return [k for k, _st in p._queues[p._DEAD].entries()]


def _last_user(p, key: str) -> int:
    if isinstance(p, PrefixPruneReference):
        return p._unpack(p._state[key])[0]
    return p._nodes[key].pol >> _TICK_SHIFT


def test_registered_by_name():
    assert POLICIES["prefix-prune"] is PrefixPrunePolicy
    assert isinstance(make_policy("prefix-prune"), PrefixPrunePolicy)


@BOTH
def test_without_branches_it_orders_like_prefix_lfru(impl):
    reqs = [(["s", "a1", "a2", "a3"], 0), (["s", "a1", "a2", "b3", "b4"], 3),
            (["s", "a1", "a2", "b3", "b4", "c5"], 5), (["t", "u1", "u2"], 0)]
    p, q = impl(), PrefixLFRUPolicy()
    for keys, hits in reqs:
        request(p, keys, hits)
        request(q, keys, hits)
        assert order(p) == order(q)
    assert p.pruned == 0


@BOTH
def test_a_passed_over_branch_goes_before_everything_but_older_dead_keys(impl):
    p = impl()
    request(p, ["s", "a1", "a2", "a3", "a4"], 0)
    request(p, ["x", "y1", "y2"], 0)                    # unrelated, newer
    # The same history up to a2, then a different message: a3 is passed over
    # (a4, the old tail, was first in line already).
    request(p, ["s", "a1", "a2", "b3", "b4"], 3)
    got = order(p)
    assert got[:3] == ["a4", "y2", "a3"]                # dead queue, in the order it filled
    assert got[3] == "b4"                               # the new request's tail
    assert got.index("y1") < got.index("b3")            # the rest by recency as before
    assert p.pruned == 1


@BOTH
def test_a_shared_prefix_is_pruned_at_most_once(impl):
    p = impl()
    request(p, ["s", "a1", "a2", "a3"], 0)
    request(p, ["s", "a1", "a2", "b3"], 3)   # branch at a2: a3 was the tail anyway
    assert p.pruned == 0
    # The first request to leave s's only line passes that line over...
    request(p, ["s", "c1", "c2", "c3"], 1)
    assert set(_dead(p)) >= {"a1", "a2"} and p.pruned == 2
    # ...but now s has been left once: it is a shared prefix, and a conversation
    # starting from it prunes nothing (c1's line stays an ordinary once-used line).
    request(p, ["s", "d1", "d2", "d3"], 1)
    assert p.pruned == 2
    assert not {"c1", "c2", "d1", "d2"} & set(_dead(p))


@BOTH
def test_keys_used_since_by_someone_else_are_not_pruned(impl):
    p = impl()
    request(p, ["s", "a1", "a2", "a3", "a4"], 0)
    request(p, ["s", "a1", "a2", "a3", "a4", "n5", "n6"], 5)   # the next turn
    request(p, ["k1", "k2"], 0)
    p.on_access("a3")                       # a plain get, a request of its own
    # An edit at a1: what the next turn went on to below a1 is passed over, except
    # a3, whose last user is the plain get.
    request(p, ["s", "a1", "b2", "b3"], 2)
    dead = _dead(p)
    assert {"a2", "a4", "n5", "n6"} <= set(dead) and "a3" not in dead
    assert p.pruned == 3


@BOTH
def test_a_pruned_key_read_again_is_an_ordinary_key_again(impl):
    p = impl()
    request(p, ["s", "a1", "a2", "a3"], 0)
    request(p, ["s", "b1", "b2"], 1)           # prunes a1, a2
    assert {"a1", "a2"} <= set(_dead(p))
    request(p, ["s", "a1", "a2", "a3x"], 3)    # the old conversation comes back after all
    assert "a1" not in _dead(p) and "a2" not in _dead(p)
    assert order(p).index("a1") > order(p).index("b1")   # used twice now: kept longer


@BOTH
def test_request_lists_die_with_their_keys(impl):
    p = impl()
    cached: set[str] = set()
    for i in range(300):
        keys = ["root"] + [f"r{i}.{j}" for j in range(1, 6)]
        if i % 3:   # two requests in three are the next turn of the one before
            keys = prev[:-1] + [f"r{i}.{j}" for j in range(6)]
        hits = next((n for n, k in enumerate(keys) if k not in cached), len(keys))
        request(p, keys, hits)
        cached.update(keys)
        prev = keys
        while len(cached) > 40:                 # a 40-key cache
            victim = next(k for k in p.victims() if k in cached)
            cached.discard(victim)
            p.on_remove(victim)
    # Only requests that are still the last user of a cached key keep their list.
    owners = {_last_user(p, k) for k in cached}
    assert set(p._reqs) == owners
    assert sum(entry[0] for entry in p._reqs.values()) == len(cached)
    for k in list(cached):
        p.on_remove(k)
    assert not p._reqs and not list(p.victims())


@BOTH
def test_keys_outside_any_chain_keep_no_request_list(impl):
    p = impl()
    for i in range(50):
        p.on_insert(f"plain{i}", 1)
    p.on_access("plain3")
    assert not p._reqs
    assert order(p)[-1] == "plain3"


def test_replay_through_store_equals_simulation():
    t = load_trace(HEAD300)
    cap = capacity_blocks(t, 25)
    made = []
    sim = simulate_policy(t, cap, lambda: made.append(PrefixPrunePolicy()) or made[-1])
    assert made[0].pruned > 0    # the head of the real trace has passed-over branches
    res = replay(t, cap, "prefix-prune", block_bytes=1024)
    assert res.hits == sim.hits and res.evictions == sim.evictions > 0
    assert res.failed_gets == 0 and res.verified_gets == sim.hits


def _evict_alike(policies, cap: int, reqs) -> int:
    """Drive every policy with the same requests into a cache of `cap` keys, evicting the
    first victim that is cached; the victims must agree at every step. Returns how many
    evictions were compared."""
    cached: set[str] = set()
    evicted = 0
    for keys in reqs:
        hits = next((n for n, k in enumerate(keys) if k not in cached), len(keys))
        for p in policies:
            request(p, keys, hits)
        cached.update(keys)
        while len(cached) > cap:
            got = [next(k for k in p.victims() if k in cached) for p in policies]
            assert len(set(got)) == 1, got
            cached.discard(got[0])
            for p in policies:
                p.on_remove(got[0])
            evicted += 1
    return evicted


def test_compact_and_reference_evict_alike_on_conversations():
    rng = random.Random(7)
    convs: list[list[str]] = []
    reqs = []
    for i in range(3000):
        r = rng.random()
        if convs and r < 0.45:                       # a next turn: the chain grows
            c = rng.choice(convs)
            c[:] = c[:-1] + [f"n{i}.{j}" for j in range(rng.randint(1, 4))]
        elif convs and r < 0.6:                      # an edit: a branch off an earlier block
            c = list(rng.choice(convs))
            c = c[:rng.randint(1, max(1, len(c) - 1))] + [f"e{i}.{j}" for j in range(3)]
            convs.append(c)
        else:                                        # a new conversation off the shared head
            c = ["head"] + [f"c{i}.{j}" for j in range(rng.randint(1, 6))]
            convs.append(c)
        reqs.append(list(c))
    compact, ref = PrefixPrunePolicy(), PrefixPruneReference()
    assert _evict_alike([compact, ref], 150, reqs) > 1000
    assert compact.pruned == ref.pruned > 0


def test_compact_and_reference_evict_alike_on_the_trace_head():
    reqs = [[f"b{h}" for h in r.hash_ids] for r in load_trace(HEAD300).requests]
    compact, ref = PrefixPrunePolicy(), PrefixPruneReference()
    assert _evict_alike([compact, ref], 400, reqs) > 1000
    assert compact.pruned == ref.pruned > 0
