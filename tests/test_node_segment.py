"""A node's DRAM segment: the inventory scan looks only where the memfd holds data, so a
fresh segment is registered without faulting in (and so allocating) every page, and a
segment with records still gives them all back."""
from __future__ import annotations

import os

import numpy as np
import pytest

from mooncake_store._engine import ffi, lib
from mooncake_store.codec import header_size
from mooncake_store.errors import InvalidParams
from mooncake_store.node.inventory import scan
from mooncake_store.node.segment import DramSegment, host_memory

MiB = 1 << 20


def _write_record(seg: DramSegment, off: int, key: bytes, size: int) -> None:
    value = np.random.default_rng(off).integers(0, 256, size, dtype=np.uint8)
    n = lib.mcs_rec_write(seg.ptr + off, seg.size - off, key, len(key),
                          ffi.from_buffer(value), size, 1, 0, 0, 0)
    assert n == header_size(len(key)) + size


def _allocated(seg: DramSegment) -> int:
    return os.fstat(seg.fd).st_blocks * 512


def test_fresh_segment_scan_allocates_nothing():
    seg = DramSegment(256 * MiB)
    try:
        assert seg.written_ranges() == []
        assert scan(seg.ptr, seg.size, seg.written_ranges()) == []
        assert _allocated(seg) == 0      # a full scan would have allocated all 256 MiB
        scan(seg.ptr, seg.size)
        assert _allocated(seg) == seg.size
    finally:
        seg.close()


def test_scan_of_written_ranges_finds_every_record():
    seg = DramSegment(64 * MiB)
    try:
        places = [(0, b"first", 100), (MiB - 128, b"straddles-pages", 3 * 4096 + 5),
                  (32 * MiB + 4096, b"middle", 64 * 1024), (seg.size - 4096, b"last", 1000)]
        for off, key, size in places:
            _write_record(seg, off, key, size)
        ranges = seg.written_ranges()
        assert 0 < sum(b - a for a, b in ranges) < seg.size // 100
        found = sorted(scan(seg.ptr, seg.size, ranges), key=lambda e: e[1])
        assert [(e[0], e[1], e[3]) for e in found] == [(k.decode(), o, n) for o, k, n in places]
        assert found == sorted(scan(seg.ptr, seg.size), key=lambda e: e[1])
    finally:
        seg.close()


def test_segment_larger_than_the_host_is_refused():
    with pytest.raises(InvalidParams, match="memory"):
        DramSegment(host_memory() + (1 << 30))
