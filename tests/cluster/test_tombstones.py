"""Freed records are invalidated on their nodes (master/tombstones.py, csrc mcs_rec_zap),
and never a record that a new allocation may own."""
from __future__ import annotations

import pytest

from mooncake_store import Config
from mooncake_store._engine import ffi, lib
from mooncake_store.errors import NoSpace
from mooncake_store.codec import header_size
from mooncake_store.master.index import ObjectIndex
from mooncake_store.master.tombstones import Tombstones, ZapQueue
from mooncake_store.node import inventory
from mooncake_store.replica import Slice


def _record(buf, off: int, key: bytes, value: bytes, epoch: int = 1) -> int:
    n = lib.mcs_rec_write(buf + off, 1 << 16, key, len(key), value, len(value), epoch, 0, 0, 0)
    assert n > 0
    return n


def test_zap_invalidates_only_the_expected_record():
    buf = ffi.new("char[]", 1 << 17)
    n = _record(buf, 0, b"k1", b"a" * 500)
    assert lib.mcs_rec_zap(buf, 1 << 17, n + 64) == 0          # another length: left alone
    assert lib.mcs_rec_check_header(buf, n, ffi.NULL, 0, ffi.NULL) == 0
    assert lib.mcs_rec_zap(buf, 1 << 17, n) == 1
    assert lib.mcs_rec_check_header(buf, n, ffi.NULL, 0, ffi.NULL) != 0
    assert lib.mcs_rec_zap(buf, 1 << 17, n) == 0               # nothing valid left to zap
    assert lib.mcs_rec_zap(buf + 4, 1 << 16, n) < 0            # misaligned: refused
    m = _record(buf, 8192, b"k3", b"c" * 300)
    assert lib.mcs_rec_zap(buf + 8192, 1 << 16, 0) == 1        # 0: whatever record is there
    assert lib.mcs_rec_check_header(buf + 8192, m, ffi.NULL, 0, ffi.NULL) != 0
    # An inventory scan no longer finds it; an untouched neighbour is still found.
    _record(buf, 4096, b"k2", b"b" * 100)
    assert [e[0] for e in inventory.scan(buf, 1 << 17)] == ["k2"]


def test_freed_header_line_is_held_until_the_node_reports():
    ix = ObjectIndex(Config())
    ts = Tombstones(lambda: 0.0)
    ts.attach(ix)
    ix.add_segment("s", 64 * 1024)
    reps = ix.put_start("gone", 4000)
    ix.put_end("gone")
    off = reps[0][0].offset
    ix.remove("gone")
    assert ix.segments["s"].allocator.used == 0
    zaps = ts.take(["s"])
    assert [z[1:] for z in zaps] == [["s", off, reps[0][0].length]]
    # While the node works on it, no allocation may cover the header line.
    alloc = ix.segments["s"].allocator
    assert alloc.used == alloc.align
    got = [ix.put_start(f"n{i}", 900) for i in range(40)]
    starts = {r[0][0].offset for r in got if r}
    ends = {(r[0][0].offset, r[0][0].offset + r[0][0].length) for r in got if r}
    assert off not in starts and not any(a <= off < b for a, b in ends)
    assert ts.done([zaps[0][0]]) == 1 and ts.done([zaps[0][0]]) == 0
    assert ts.counters["zaps_done"] == 1


def test_reallocated_extent_is_not_sent():
    ix = ObjectIndex(Config())
    ts = Tombstones(lambda: 0.0)
    ts.attach(ix)
    ix.add_segment("s", 8192)
    ix.put_start("a", 1000)
    ix.put_end("a")
    ix.remove("a")
    again = ix.put_start("b", 1000)        # first fit: the same extent again
    assert again is not None
    # Until b's writer confirms, its write may never happen: the zap waits.
    assert ts.take(["s"]) == [] and ts.counters["zaps_deferred"] == 1
    ix.put_end("b")                        # written over the old header: nothing to zap
    assert ts.take(["s"]) == [] and ts.counters["zaps_skipped"] == 1
    assert ts.pending() == 0


def test_a_writer_that_dies_before_writing_leaves_no_old_header():
    """The extent of a removed record goes to a put whose client dies before writing: the
    old record's zap waits through heartbeats while the put is pending, and goes out with
    the abandoned put's own tombstone once it is reclaimed."""
    now = [0.0]
    ix = ObjectIndex(Config(put_timeout_ms=1000), clock=lambda: now[0])
    ts = Tombstones(lambda: now[0])
    ts.attach(ix)
    ix.add_segment("s", 8192)
    old = ix.put_start("a", 1000)[0][0]
    ix.put_end("a")
    ix.remove("a")
    dead = ix.put_start("b", 2000)[0][0]
    assert dead.offset == old.offset
    for _ in range(3):                     # heartbeats while b is pending
        assert ts.take(["s"]) == []
    now[0] = 2.0
    assert ix.reclaim_expired() == 1
    zaps = ts.take(["s"])
    assert [z[2:] for z in zaps] == [[old.offset, old.length]]   # one line: one zap at a time
    assert ts.done([zaps[0][0]]) == 1
    assert [z[2:] for z in ts.take(["s"])] == [[dead.offset, dead.length]]


def _freed_records(n: int, seg_bytes: int, now: list | None = None):
    """An index over one segment filled with n records of seg_bytes / n, all removed: every
    record's zap queued, the node not heartbeating yet. `now`: [seconds], the clock."""
    now = [0.0] if now is None else now
    ix = ObjectIndex(Config(high_watermark=1.0), clock=lambda: now[0])   # nothing evicted
    ts = Tombstones(lambda: now[0])
    ts.attach(ix)
    ix.add_segment("s", seg_bytes)
    record = seg_bytes // n
    freed = []
    for i in range(n):
        freed.append(ix.put_start(f"a{i}", record - header_size(2))[0][0])
        ix.put_end(f"a{i}")
    assert sum(sl.length for sl in freed) == seg_bytes
    for i in range(n):
        ix.remove(f"a{i}")
    return ix, ts, freed


def _grant(ix, owner: str, record: int):
    with ix.lock:
        return ix.reservations.grant_locked(owner, record, 0, ix.clock())


def test_reservation_over_a_queued_zap_keeps_it_until_written_or_freed():
    """First fit puts the reservation on a freed record whose zap is queued. While the
    client holds it unwritten the zap waits; given back unwritten, the zap goes out."""
    ix, ts, freed = _freed_records(2, 64 * 1024)
    rid, sl = _grant(ix, "c1", 1000)
    assert sl.offset == freed[0].offset                # no detour around the zap
    zaps = ts.take(["s"])
    assert [z[2] for z in zaps] == [freed[1].offset]   # a1's line is free: sent
    assert ts.counters["zaps_deferred"] == 1
    assert ix.reservations.release_locked("c1", rid)
    assert [z[2] for z in ts.take(["s"])] == [freed[0].offset]


def test_committed_record_overwrites_the_old_header_and_its_tail_keeps_the_zaps():
    """A record written into the reservation covers a0's header (its zap is dropped), the
    never-written tail still holds a1's header (its zap goes out once the tail is free)."""
    ix, ts, freed = _freed_records(32, 1 << 20)         # a freed record every 32 KiB
    rid, sl = _grant(ix, "c1", 48 * 1024)               # over a0 and a1's header
    assert sl.offset == 0 and sl.offset + sl.length > freed[1].offset
    sent = ts.take(["s"])
    assert sorted(z[2] for z in sent) == [f.offset for f in freed[2:]]
    assert ts.counters["zaps_deferred"] == 2
    assert ts.done([z[0] for z in sent]) == 30
    code, _nxt = ix.put_commit("c1", rid, "k", 100, 0, False, 0)
    assert code == 0 and ix.exists("k")
    zaps = ts.take(["s"])
    assert [z[2:] for z in zaps] == [[freed[1].offset, freed[1].length]]
    assert ts.counters["zaps_skipped"] == 1            # a0's: overwritten by k's record


def test_zaps_under_a_reservation_go_out_once_no_commit_can_name_it():
    """An idle client's reservation delays a zap by its commit window only: after it a
    commit answers GONE, so the zap goes out, its line lent to the reservation and held
    again when the reservation is freed."""
    now = [0.0]
    ix, ts, freed = _freed_records(2, 64 * 1024, now)
    rid, sl = _grant(ix, "c1", 1000)
    assert sl.offset == freed[0].offset
    assert [z[2] for z in ts.take(["s"])] == [freed[1].offset]
    now[0] = 1.0                                       # within the window: still waits
    assert ts.take(["s"]) == [] and ts.counters["zaps_deferred"] == 2
    now[0] = 1.2
    zaps = ts.take(["s"])
    assert [z[2:] for z in zaps] == [[freed[0].offset, freed[0].length]]
    assert ts.counters["zap_lines_lent"] == 1
    alloc = ix.segments["s"].allocator
    # The late writer is told GONE; the reservation is freed as the record it wrote, and
    # the lent line is held again until the node reports.
    code, nxt = ix.put_commit("c1", rid, "late", 100, 0, False, 0)
    assert code == 2 and nxt is None and not ix.exists("late")
    assert alloc.used == 2 * alloc.align               # a1's line and the lent one
    assert ts.done([zaps[0][0]]) == 1
    assert alloc.used == alloc.align


def test_a_reservation_freed_without_a_commit_is_zapped_whatever_was_written():
    """The master never learns what a dead client wrote into its reservation (a record of
    any length up to the slice), so the tombstone of a reclaimed or given-back reservation
    names length 0: the node flips whatever record starts there."""
    now = [0.0]
    ix = ObjectIndex(Config(put_timeout_ms=2000), clock=lambda: now[0])
    ts = Tombstones(lambda: now[0])
    ts.attach(ix)
    ix.add_segment("s", 1 << 20)
    rid, sl = _grant(ix, "c1", 10_000)
    assert sl.length == 10_048                         # rounded: never a record's length
    now[0] = 3.0
    assert ix.reclaim_expired() == 0 and ix.stats()["reserved"] == 0
    assert [z[2:] for z in ts.take(["s"])] == [[sl.offset, 0]]
    rid2, sl2 = _grant(ix, "c2", 10_000)
    assert ix.reserve_release("c2", rid2)              # given back by a closing client
    assert [z[2:] for z in ts.take(["s"])] == [[sl2.offset, 0]]


def test_reservations_go_on_right_after_a_mass_removal():
    """Every free byte lies on a freed record whose zap is queued: a reservation is still
    granted (first fit), so small puts keep their one round trip under eviction churn."""
    ix, ts, freed = _freed_records(64, 64 * 1024)      # a freed record every 1 KiB
    got = _grant(ix, "c1", 1000)
    assert got is not None and got[1].offset == 0
    code, nxt = ix.put_commit("c1", got[0], "k", 500, 0, False, 1000)
    assert code == 0 and nxt is not None
    zaps = ts.take(["s"])
    # The record [0, 576) overwrote a0's header only; the next reservation holds a1's.
    assert sorted(z[2] for z in zaps) == [f.offset for f in freed[2:]]
    assert ts.counters["zaps_skipped"] == 1 and ts.counters["zaps_deferred"] == 1


@pytest.mark.parametrize("n", [3])
def test_node_side_reports_every_id(n):
    class Seg:
        def __init__(self):
            self.buf = ffi.new("char[]", 1 << 16)
            self.ptr, self.size = ffi.cast("char *", self.buf), 1 << 16

    class M:
        segment = Seg()

    m = M()
    sizes = [_record(m.segment.ptr, i * 4096, f"k{i}".encode(), b"x" * 300) for i in range(n)]
    zaps = [[i + 1, "s", i * 4096, sizes[i]] for i in range(n)] + [[99, "nope", 0, 1], "junk"]
    ids, zapped, skipped = inventory.zap_records({"s": m}, zaps)
    assert ids == [1, 2, 3, 99] and (zapped, skipped) == (3, 1)
    assert inventory.scan(m.segment.ptr, 1 << 16) == []


def _filled(n_objects: int = 16, record: int = 4096):
    """A segment exactly full of same-size records, all removed, their zaps in flight."""
    ix = ObjectIndex(Config(high_watermark=1.0))
    ts = Tombstones(lambda: 0.0)
    ts.attach(ix)
    ix.add_segment("s", n_objects * record)
    value = record - 64 - 64           # header of a short key is one line; + one spare line
    first = ix.put_start("o0", value)[0][0]
    value += record - first.length     # land exactly on `record` bytes
    ix.put_end("o0")
    ix.remove("o0")
    for i in range(n_objects):
        assert ix.put_start(f"o{i}", value)[0][0].length == record
        ix.put_end(f"o{i}")
    for i in range(n_objects):
        ix.remove(f"o{i}")
    zaps = ts.take(["s"])
    # o0's first zap holds line 0, so its second (another length) waits for the next one.
    assert len(zaps) == n_objects and ts.counters["zaps_deferred"] == 1
    assert ts.counters["zaps_skipped"] == 0
    return ix, ts, zaps, value


def test_same_size_puts_reuse_space_while_zaps_are_in_flight():
    ix, ts, zaps, value = _filled()
    alloc = ix.segments["s"].allocator
    freed = {(z[2], z[3]) for z in zaps}
    # Every hole is one line short of a record while its zap is out; the lines whose left
    # neighbour is free go back, so all but one record's worth of the space is usable.
    got = []
    for i in range(16):
        try:
            got.append(ix.put_start(f"n{i}", value)[0][0])
        except NoSpace:
            break
    assert len(got) == 15
    # No new record starts where a freed record of its length starts: a late zap there
    # cannot match it.
    assert not any((sl.offset, sl.length) in freed for sl in got)
    # A new record freed while a zap it covers is still out: that line is held again.
    victim = got[3]
    covered = [z for z in zaps if victim.offset < z[2] < victim.offset + victim.length]
    assert covered
    ix.put_end("n3")
    ix.remove("n3")
    line = covered[0][2]
    assert not any(s <= line < s + n for s, n in alloc._by_start.items())
    again = ix.put_start("again", value)[0][0]
    assert (again.offset, again.length) not in freed
    # The node reports: every line is back, nothing is freed twice.
    assert ts.done([z[0] for z in zaps]) == len(zaps)
    for i, sl in enumerate(got):
        if i != 3:
            ix.put_end(f"n{i}")
            ix.remove(f"n{i}")
    ix.put_end("again")
    ix.remove("again")
    assert alloc.used == 0 and alloc.largest_free() == alloc.capacity
    assert ts.pending() == 17    # the new records' own zaps and o0's second, queued


def test_a_copy_the_master_started_keeps_the_zaps_under_it_until_it_lands_or_fails():
    """A repair or hot-replica copy goes into space freed a moment ago: the old record's
    zap waits while the node copies (the copy may never land), and goes out once the
    destination is freed after a failed copy."""
    from mooncake_store.master.service import MasterService, Task

    svc = MasterService(Config(lease_ttl_ms=0))
    ix, ts = svc.index, svc.tombstones
    ix.add_segment("s", 64 * 1024)
    old = ix.put_start("a", 1000)[0][0]
    ix.put_end("a")
    ix.remove("a")
    with ix.lock:                                 # the destination of a copy, first fit
        off = ix.segments["s"].allocator.alloc(2000)
    dst = Slice("s", off, 2000)
    assert dst.offset == old.offset
    svc._tasks[1] = Task("b", dst, "node-1", 1e18)
    assert ts.take(["s"]) == [] and ts.counters["zaps_deferred"] == 1
    del svc._tasks[1]                             # the copy failed: its room is freed
    with ix.lock:
        ix._free_replicas([(dst,)])
    assert [z[2:] for z in ts.take(["s"])] == [[old.offset, old.length]]


def test_zap_queue_keeps_order_compacts_and_drops_only_past_its_cap():
    q = ZapQueue(cap=10_000)
    for i in range(9_000):
        assert q.append(i * 64, i + 1)
    got = [q.popleft() for _ in range(6_000)]          # past the compaction threshold
    assert got == [(i * 64, i + 1) for i in range(6_000)] and len(q) == 3_000
    assert all(q.append(i * 64, 7) for i in range(7_000))
    assert len(q) == 10_000 and not q.append(1, 1)     # one over the cap: the oldest goes
    assert q.popleft() == (6_001 * 64, 6_002)
    with pytest.raises(IndexError):
        empty = ZapQueue(1)
        empty.popleft()


def test_a_mass_removal_keeps_every_zap():
    """More records freed at once than the old 65,536 cap: none dropped, all sent in turn."""
    n = 80_000
    ix = ObjectIndex(Config(high_watermark=1.0))
    ts = Tombstones(lambda: 0.0)
    ts.attach(ix)
    ix.add_segment("s", n * 4096)
    for i in range(n):
        ix.put_start(f"o{i}", 4000)
        ix.put_end(f"o{i}")
    assert ix.remove_many([f"o{i}" for i in range(n)]) == n
    sent = set()
    for _ in range(n // 4096 + 1):
        zaps = ts.take(["s"])
        sent |= {z[2] for z in zaps}
        ts.done([z[0] for z in zaps])
    assert ts.counters["zaps_dropped"] == 0
    assert sent == {i * 4096 for i in range(n)} and ts.pending() == 0


def test_a_node_drains_a_mass_removal_faster_than_one_batch_per_heartbeat(cluster):
    """More zaps queued than one heartbeat carries: the master says so and the node asks
    again after 0.1 s instead of a whole heartbeat (here 2 s: 4 batches took >= 6 s)."""
    from support.cluster import store, wait_nodes
    from support.procs import wait_until

    m = cluster.master("--heartbeat-ms", "2000", node_ttl_ms=10_000)
    cluster.node(m.addr)
    wait_nodes(m.addr, 1)
    n = 3 * 4096 + 500
    keys = [f"z/{i}" for i in range(n)]
    with store(m.addr) as s:
        for lo in range(0, n, 1024):
            assert s.batch_put(keys[lo:lo + 1024], [b"v" * 64] * len(keys[lo:lo + 1024])) == \
                [0] * len(keys[lo:lo + 1024])
        assert s.batch_remove(keys) == [0] * n
        wait_until(lambda: s.stats()["zaps_done"] >= n, timeout=4.5, what="every zap done")
        assert s.stats()["zaps_dropped"] == 0
