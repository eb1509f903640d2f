"""Freed records are invalidated on their nodes (master/tombstones.py, csrc mcs_rec_zap),
and never a record that a new allocation may own."""
from __future__ import annotations

import pytest

from mooncake_store import Config
from mooncake_store._engine import ffi, lib
from mooncake_store.errors import NoSpace
from mooncake_store.codec import header_size
from mooncake_store.master.index import ObjectIndex
from mooncake_store.master.tombstones import Tombstones
from mooncake_store.node import inventory


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
    assert ts.take(["s"]) == [] and ts.counters["zaps_skipped"] == 1
    assert again is not None


def _freed_records(n: int, seg_bytes: int):
    """An index over one segment filled with n records of seg_bytes / n, all removed: every
    record's zap queued, the node not heartbeating yet."""
    ix = ObjectIndex(Config(high_watermark=1.0))   # full, and nothing evicted
    ts = Tombstones(lambda: 0.0)
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


def test_reservation_leaves_a_queued_zap_alone_and_takes_a_clean_spot():
    ix, ts, freed = _freed_records(2, 64 * 1024)
    # First fit would start the reservation on a0's header, whose zap is still queued; an
    # unwritten reservation there would keep that header alive past its zap. It goes high
    # in the free block instead, where no freed record starts.
    with ix.lock:
        got = ix.reservations.grant_locked("c1", 1000, 0, ix.clock())
    assert got is not None
    sl = got[1]
    assert sl.offset + sl.length == 64 * 1024
    assert not any(sl.offset <= f.offset < sl.offset + sl.length for f in freed)
    # Both zaps go out at the next heartbeat.
    assert sorted(z[2] for z in ts.take(["s"])) == sorted(f.offset for f in freed)


def test_clean_spot_finds_the_highest_gap_between_queued_zaps():
    ix, ts, freed = _freed_records(8, 64 * 1024)             # freed records every 8 KiB
    starts = [f.offset for f in freed]
    assert ts.clean_spot("s", 0, 64 * 1024, 8192 - 64, 64) == starts[-1] + 64
    assert ts.clean_spot("s", 0, 64 * 1024, 8192, 64) is None   # each gap is a line short
    assert ts.clean_spot("s", 0, starts[3], 4096, 64) == starts[3] - 4096
    assert ts.clean_spot("s", 0, 64, 64, 64) is None          # only a0's header line
    assert ts.clean_spot("s", 64, 8192, 1024, 64) == 8192 - 1024
    assert ts.clean_spot("other", 0, 4096, 4096, 64) == 0     # nothing queued there
    # A lent line (its zap out, no_room gave it back) is never where a new record starts.
    ts._lent_at["s"] = {64 * 1024 - 8192 + 64: 1}
    assert ts.clean_spot("s", 0, 64 * 1024, 8192 - 64, 64) is None


def test_reservation_is_refused_when_every_free_place_has_a_queued_zap():
    ix, ts, freed = _freed_records(64, 64 * 1024)             # a freed record every 1 KiB
    with ix.lock:
        assert ix.reservations.grant_locked("c1", 1000, 0, ix.clock()) is None
        assert ix.segments["s"].allocator.used == 0            # nothing left allocated
    zaps = ts.take(["s"])
    assert len(zaps) == 64
    assert ts.done([z[0] for z in zaps]) == 64                 # the node has zapped them
    with ix.lock:
        assert ix.reservations.grant_locked("c1", 1000, 0, ix.clock()) is not None


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
    assert len(zaps) == n_objects and ts.counters["zaps_skipped"] == 1
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
    assert ts.pending() == 16    # the new records' own zaps, queued
