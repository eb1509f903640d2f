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


def _write_record(seg: DramSegment, off: int, key: bytes, size: int, epoch: int = 1) -> int:
    value = np.random.default_rng(off).integers(0, 256, size, dtype=np.uint8)
    n = lib.mcs_rec_write(seg.ptr + off, seg.size - off, key, len(key),
                          ffi.from_buffer(value), size, epoch, 0, 0, 0)
    assert n == header_size(len(key)) + size
    return (n + 63) // 64 * 64


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


def test_scan_skips_torn_records_and_keeps_the_newest_copy_of_a_key():
    seg = DramSegment(16 * MiB)
    try:
        at, want = 0, {}
        for i in range(5000):   # more than one call into C takes
            key = f"k{i}".encode()
            want[key.decode()] = at
            at += _write_record(seg, at, key, 100 + i % 300)
        torn = want.pop("k77")
        seg.view(torn + 200, 1)[0] ^= 0xFF                    # its value no longer verifies
        want["k5"] = at
        at += _write_record(seg, at, b"k5", 64, epoch=2)      # newer epoch, further on
        _write_record(seg, at, b"k6", 64, epoch=0)           # older epoch: the first k6 stays
        found = {e[0]: e[1] for e in scan(seg.ptr, seg.size, seg.written_ranges())}
        assert found == want
    finally:
        seg.close()


def test_scan_of_garbage_with_magic_everywhere_finds_nothing():
    rng = np.random.default_rng(7)
    mem = rng.integers(0, 256, 1 * MiB, dtype=np.uint8)
    lines = mem.reshape(-1, 64)
    lines[:, :4] = np.frombuffer(b"MCS1", dtype=np.uint8)    # a candidate at every line
    lines[:, 4] = 1                                           # with the right version
    lines[::3, 10:12] = [64, 0]                               # and plausible header lengths
    assert scan(ffi.from_buffer(mem), mem.nbytes) == []


def test_scan_refuses_bad_bounds():
    mem = np.zeros(4096, dtype=np.uint8)
    out, nxt = ffi.new("mcs_rec_found[]", 4), ffi.new("uint64_t *")
    p = ffi.from_buffer(mem)
    assert lib.mcs_rec_scan(p, mem.nbytes, 32, 4096, out, 4, nxt) < 0     # lo not on a line
    assert lib.mcs_rec_scan(p, mem.nbytes, 0, 8192, out, 4, nxt) < 0      # hi past the region
    assert lib.mcs_rec_scan(p, mem.nbytes, 0, 4096, out, 4, nxt) == 0 and nxt[0] == 4096
