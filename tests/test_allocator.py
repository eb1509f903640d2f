"""Allocator properties: no overlap, bounds respected, frees coalesce completely."""
import pytest
from hypothesis import given, settings, strategies as st

from mooncake_store.errors import InvalidParams
from mooncake_store.master.allocator import Allocator

CAP = 1 << 20


def _check_no_overlap(live, a):
    spans = sorted(live.items())
    for (o1, s1), (o2, _) in zip(spans, spans[1:]):
        assert o1 + a.round(s1) <= o2
    for o, s in spans:
        assert 0 <= o and o + a.round(s) <= a.capacity and o % a.align == 0
    assert a.used == sum(a.round(s) for s in live.values())
    free = a.free_blocks()
    for (f1, l1), (f2, _) in zip(free, free[1:]):
        assert f1 + l1 < f2, "two adjacent free blocks were not coalesced"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(min_value=1, max_value=CAP // 8)),
                max_size=200))
def test_random_alloc_free(ops):
    a = Allocator(CAP)
    live = {}
    for op, size in ops:    # 0: free, 1: alloc
        if op or not live:
            off = a.alloc(size)
            if off is None:
                assert a.largest_free() < a.round(size)
            else:
                live[off] = size
        else:
            off = sorted(live)[size % len(live)]
            a.free(off, live.pop(off))
        _check_no_overlap(live, a)
    for off, size in list(live.items()):
        a.free(off, size)
    assert a.used == 0
    assert a.free_blocks() == [(0, CAP)]


def test_exhaustion_and_reuse():
    a = Allocator(4096, align=64)
    offs = [a.alloc(64) for _ in range(64)]
    assert None not in offs and a.alloc(1) is None
    a.free(offs[10], 64)
    assert a.alloc(64) == offs[10]


def test_bad_calls():
    a = Allocator(4096)
    with pytest.raises(InvalidParams):
        a.alloc(0)
    off = a.alloc(100)
    a.free(off, 100)
    with pytest.raises(InvalidParams):
        a.free(off, 100)  # double free
    with pytest.raises(InvalidParams):
        Allocator(4096, align=3)


def test_reserve_rebuilds_from_inventory():
    a = Allocator(1 << 16)
    assert a.reserve(4096, 1000)
    assert not a.reserve(4096, 64)
    assert a.used == 1024
    got = [a.alloc(4096) for _ in range(15)]
    assert None not in got
    assert all(o + 4096 <= 4096 or o >= 4096 + 1024 for o in got)
    assert a.alloc(4096) is None  # 64 KiB - 1 KiB reserved leaves room for exactly 15


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=CAP // 16), max_size=40),
       st.lists(st.tuples(st.integers(0, CAP // 64 - 1), st.integers(0, CAP // 8)), max_size=60))
def test_reserve_many_takes_exactly_the_free_ranges_it_reports(allocs, ranges):
    """Against a model: a range is taken iff it lies in free space and overlaps no range
    taken before it in offset order; what stays free is exactly the rest, coalesced."""
    a = Allocator(CAP)
    live = {}
    for size in allocs:                         # a fragmented start: every other block freed
        off = a.alloc(size)
        if off is not None:
            live[off] = size
    for off in sorted(live)[::2]:
        a.free(off, live.pop(off))
    free_before = {x for s, n in a.free_blocks() for x in range(s // 64, (s + n) // 64)}
    ranges = [(line * 64, size) for line, size in ranges]
    got = a.reserve_many(ranges)
    taken = set()
    for i in sorted(range(len(ranges)), key=lambda j: ranges[j][0]):   # ties: first given first
        (off, size), ok = ranges[i], got[i]
        lines = set(range(off // 64, (off + a.round(size)) // 64))
        want = size > 0 and lines <= free_before - taken
        assert ok == want, (off, size)
        if ok:
            taken |= lines
            live[off] = size
    _check_no_overlap(live, a)
    assert {x for s, n in a.free_blocks() for x in range(s // 64, (s + n) // 64)} == \
        free_before - taken


def test_reserve_many_of_a_fragmented_inventory_is_not_quadratic():
    # Records with a gap after each: one reserve per record scanned every gap before it.
    n, rec = 50_000, 4160
    a = Allocator(2 * n * rec)
    got = a.reserve_many([(2 * i * rec, rec) for i in range(n)])
    assert all(got) and a.used == n * rec and len(a.free_blocks()) == n
