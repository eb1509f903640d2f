"""prefix-prune: prefix-lfru that evicts the branches a conversation abandons first."""
from __future__ import annotations

import os

from mooncake_store.master.policy import POLICIES, PrefixLFRUPolicy, make_policy
from mooncake_store.master.policy_prune import PrefixPrunePolicy
from mooncake_store.trace import capacity_blocks, load_trace, replay, simulate_policy

from support.policies import order, request

HEAD300 = os.path.join(os.path.dirname(__file__), "data", "conversation_trace_head300.jsonl")


def test_registered_by_name():
    assert POLICIES["prefix-prune"] is PrefixPrunePolicy
    assert isinstance(make_policy("prefix-prune"), PrefixPrunePolicy)


def test_without_branches_it_orders_like_prefix_lfru():
    reqs = [(["s", "a1", "a2", "a3"], 0), (["s", "a1", "a2", "b3", "b4"], 3),
            (["s", "a1", "a2", "b3", "b4", "c5"], 5), (["t", "u1", "u2"], 0)]
    p, q = PrefixPrunePolicy(), PrefixLFRUPolicy()
    for keys, hits in reqs:
        request(p, keys, hits)
        request(q, keys, hits)
        assert order(p) == order(q)
    assert p.pruned == 0


def test_a_passed_over_branch_goes_before_everything_but_older_dead_keys():
    p = PrefixPrunePolicy()
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


def test_a_shared_prefix_is_pruned_at_most_once():
    p = PrefixPrunePolicy()
    request(p, ["s", "a1", "a2", "a3"], 0)
    request(p, ["s", "a1", "a2", "b3"], 3)   # branch at a2: a3 was the tail anyway
    assert p.pruned == 0
    # The first request to leave s's only line passes that line over...
    request(p, ["s", "c1", "c2", "c3"], 1)
    assert set(p._queues[p._DEAD]) >= {"a1", "a2"} and p.pruned == 2
    # ...but now s has been left once: it is a shared prefix, and a conversation
    # starting from it prunes nothing (c1's line stays an ordinary once-used line).
    request(p, ["s", "d1", "d2", "d3"], 1)
    assert p.pruned == 2
    assert not {"c1", "c2", "d1", "d2"} & set(p._queues[p._DEAD])


def test_keys_used_since_by_someone_else_are_not_pruned():
    p = PrefixPrunePolicy()
    request(p, ["s", "a1", "a2", "a3", "a4"], 0)
    request(p, ["s", "a1", "a2", "a3", "a4", "n5", "n6"], 5)   # the next turn
    request(p, ["k1", "k2"], 0)
    p.on_access("a3")                       # a plain get, a request of its own
    # An edit at a1: what the next turn went on to below a1 is passed over, except
    # a3, whose last user is the plain get.
    request(p, ["s", "a1", "b2", "b3"], 2)
    dead = list(p._queues[p._DEAD])
    assert {"a2", "a4", "n5", "n6"} <= set(dead) and "a3" not in dead
    assert p.pruned == 3


def test_a_pruned_key_read_again_is_an_ordinary_key_again():
    p = PrefixPrunePolicy()
    request(p, ["s", "a1", "a2", "a3"], 0)
    request(p, ["s", "b1", "b2"], 1)           # prunes a1, a2
    assert {"a1", "a2"} <= set(p._queues[p._DEAD])
    request(p, ["s", "a1", "a2", "a3x"], 3)    # the old conversation comes back after all
    assert "a1" not in p._queues[p._DEAD] and "a2" not in p._queues[p._DEAD]
    assert order(p).index("a1") > order(p).index("b1")   # used twice now: kept longer


def test_request_lists_die_with_their_keys():
    p = PrefixPrunePolicy()
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
    owners = {p._unpack(p._state[k])[0] for k in cached}
    assert set(p._reqs) == owners
    assert sum(n for n, _keys in p._reqs.values()) == len(cached)
    for k in list(cached):
        p.on_remove(k)
    assert not p._reqs and not p._state


def test_keys_outside_any_chain_keep_no_request_list():
    p = PrefixPrunePolicy()
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
