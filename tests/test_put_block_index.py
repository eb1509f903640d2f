"""The master's side of block batch puts (master/reserve.py commit_many_locked), on an
ObjectIndex in this process: layout, per-key outcomes, tombstones of freed records."""
from __future__ import annotations

from mooncake_store.codec import header_size
from mooncake_store.config import Config
from mooncake_store.master.index import ObjectIndex
from mooncake_store.master.reserve import EXISTED, GONE
from mooncake_store.replica import Slice


def _index(**kw) -> tuple[ObjectIndex, list[Slice]]:
    ix = ObjectIndex(Config(**kw))
    ix.add_segment("n:1", 1 << 20)
    freed: list[Slice] = []
    ix.on_free = freed.append
    return ix, freed


def _rec(key: str, n: int) -> int:
    return header_size(len(key.encode())) + n


def _round(n: int) -> int:
    return (n + 63) // 64 * 64


def test_commit_publishes_records_back_to_back():
    ix, freed = _index()
    keys, sizes = ["a", "bb" * 20, "c"], [100, 5000, 1]
    size = sum(_round(_rec(k, n)) for k, n in zip(keys, sizes))
    rid, sl = ix.batch_put_reserve("me", size)
    assert sl.length == size and ix.stats()["reserved"] == 1
    assert ix.batch_put_commit("me", rid, keys, sizes, 5) == [0, 0, 0]
    at = sl.offset
    for k, n in zip(keys, sizes):
        look = ix.get_replicas(k)
        assert look.size == n and look.flags == 5
        assert look.replicas == ((Slice("n:1", at, _rec(k, n)),),)
        at += _round(_rec(k, n))
    st = ix.stats()
    assert st["reserved"] == 0 and st["reserved_puts"] == 3 and st["puts"] == 3
    assert st["used"] == size and not freed
    # The same id twice, or another owner's: gone.
    assert ix.batch_put_commit("me", rid, keys, sizes) == GONE
    rid2, _ = ix.batch_put_reserve("me", 128)
    assert ix.batch_put_commit("you", rid2, ["z"], [1]) == GONE


def test_existing_keys_and_refused_sizes_free_their_records_under_tombstones():
    ix, freed = _index(max_value_size=4096)
    ix.put_start("old", 10)
    ix.put_end("old")
    keys, sizes = ["old", "new", "big", "new"], [10, 20, 5000, 30]
    size = sum(_round(_rec(k, n)) for k, n in zip(keys, sizes))
    rid, sl = ix.batch_put_reserve("me", size)
    codes = ix.batch_put_commit("me", rid, keys, sizes)
    # The existing key and the second "new" keep their first values; "big" is refused.
    assert codes == [EXISTED, 0, -600, EXISTED]
    assert ix.get_replicas("new").size == 20 and not ix.exists("big")
    offs = [0, _round(_rec("old", 10)), _round(_rec("old", 10)) + _round(_rec("new", 20))]
    offs.append(offs[2] + _round(_rec("big", 5000)))
    assert freed == [Slice("n:1", sl.offset + offs[0], _rec("old", 10)),
                     Slice("n:1", sl.offset + offs[2], _rec("big", 5000)),
                     Slice("n:1", sl.offset + offs[3], _rec("new", 30))]
    assert ix.stats()["used"] == _round(_rec("old", 10)) + _round(_rec("new", 20))
    # An upsert batch replaces the value.
    rid, _ = ix.batch_put_reserve("me", _round(_rec("new", 7)))
    assert ix.batch_put_commit("me", rid, ["new"], [7], 0, True) == [0]
    assert ix.get_replicas("new").size == 7


def test_revoked_blocks_free_every_record_and_one_segment_rule():
    ix, freed = _index(put_timeout_ms=1000)
    keys, sizes = ["x", "y"], [100, 200]
    size = sum(_round(_rec(k, n)) for k, n in zip(keys, sizes))
    rid, sl = ix.batch_put_reserve("me", size)
    assert ix.batch_put_commit("me", rid, keys, sizes, 0, False, True) == GONE
    assert {(f.offset - sl.offset, f.length) for f in freed} >= {
        (0, _rec("x", 100)), (_round(_rec("x", 100)), _rec("y", 200))}
    assert ix.stats()["used"] == 0 and ix.stats()["reserved"] == 0
    assert not ix.exists("x")
    # Too large: no block.
    assert ix.batch_put_reserve("me", (64 << 20) + 1) is None
    # With a second segment only for a batch of small values (the client says how large
    # its largest is), placed like one put, so batches spread over both segments.
    ix.add_segment("n:2", 1 << 20)
    assert ix.batch_put_reserve("me", 128) is None
    assert ix.batch_put_reserve("me", 128, 0, 1 << 20) is None
    assert ix.batch_put_reserve("me", 128, 0, "64K") is None
    landed = set()
    for i in range(40):
        rid, sl = ix.batch_put_reserve("me", 128, 0, 60)
        assert ix.batch_put_commit("me", rid, [f"s{i}"], [60]) == [0]
        landed.add(sl.segment)
    assert landed == {"n:1", "n:2"}


def test_a_block_makes_room_by_eviction_like_a_put():
    ix, freed = _index(lease_ttl_ms=0)
    n = 0
    while ix.stats()["used"] < 0.9 * (1 << 20):   # fill the segment with plain objects
        ix.put_start(f"fill/{n}", 16 << 10)
        ix.put_end(f"fill/{n}")
        n += 1
    size = 200 << 10
    assert ix.stats()["evictions"] == 0 and (1 << 20) - ix.stats()["used"] < size
    got = ix.batch_put_reserve("me", size)
    assert got is not None and got[1].length == size
    st = ix.stats()
    assert st["evictions"] > 0 and st["used"] <= 1 << 20
    assert ix.batch_put_commit("me", got[0], ["b"], [size - _rec("b", 0)]) == [0]


def test_unwritten_tails_go_back_without_tombstones():
    """Nothing was written in a reservation's tail, so there is no new header there to
    invalidate (master/reserve.py _UNWRITTEN): the tail is freed with no tombstone, so it
    holds no line until a heartbeat and the zap queue is left as it was."""
    ix, freed = _index()
    ix.put_start("first", 10)
    rid, sl = ix.put_end_reserve("first", 0, "me", 16 << 10)
    assert sl.length == 16 << 10 and ix.stats()["reserved"] == 1
    code, nxt = ix.put_commit("me", rid, "k", 100, 0, False, 16 << 10)
    assert code == 0 and nxt is not None
    assert freed == []
    objects = _round(_rec("first", 10)) + _round(_rec("k", 100))
    assert ix.stats()["used"] == objects + (16 << 10)     # and the next reservation
    assert ix.reserve_release("me", nxt[0]) and ix.stats()["used"] == objects
    # A block whose records do not fill it: the same for its tail; the records stay.
    freed.clear()
    size = _round(_rec("a", 10)) + _round(_rec("b", 20))
    rid, sl = ix.batch_put_reserve("me", size + 4096)
    assert ix.batch_put_commit("me", rid, ["a", "b"], [10, 20]) == [0, 0]
    assert freed == [] and ix.exists("a") and ix.exists("b")
    assert ix.stats()["used"] == objects + size


def test_a_block_never_committed_is_freed_under_a_tombstone_per_planned_record():
    """The client names its records' lengths when it asks; if it dies before committing,
    the reclaim tombstones each record it may have written there (a record written but
    never named must not come back in a rebuild from the nodes)."""
    now = [0.0]
    ix = ObjectIndex(Config(put_timeout_ms=1000), clock=lambda: now[0])
    ix.add_segment("n:1", 1 << 20)
    freed: list[Slice] = []
    ix.on_free = freed.append
    recs = [_rec("a", 100), _rec("bb", 5000), _rec("c", 1)]
    size = sum(_round(r) for r in recs)
    rid, sl = ix.batch_put_reserve("me", size, 0, 5000, recs)
    # Without the layout (or with one that does not fit the block): one tombstone for
    # whatever record starts the block.
    rid2, sl2 = ix.batch_put_reserve("you", size, 0, 5000)
    rid3, sl3 = ix.batch_put_reserve("them", size, 0, 5000, recs + [size])
    now[0] = 2.0
    assert ix.reclaim_expired() == 0 and ix.stats()["reserved"] == 0
    got = {(f.offset - sl.offset, f.length) for f in freed if sl.offset <= f.offset < sl.offset + size}
    assert got == {(0, recs[0]), (_round(recs[0]), recs[1]),
                   (_round(recs[0]) + _round(recs[1]), recs[2])}
    assert {(f.offset, f.length) for f in freed if f.offset >= sl2.offset} == {
        (sl2.offset, 0), (sl3.offset, 0)}
    assert ix.stats()["used"] == 0
