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
