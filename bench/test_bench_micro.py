"""Microbenchmarks of the hot small pieces (run: pytest bench/test_bench_micro.py).

* allocator: one alloc + free pair at a steady fill, against a dict insert + delete (the least
  any Python free-list bookkeeping can cost);
* object header: C write / verified read of a 4 KiB record (mcs_rec_write / mcs_rec_read, the
  CRC32C fused with the copy), against a plain memcpy of the same bytes; the Python codec's
  encode / decode (used off the hot path: inventory scans, tools);
* index: put_start + put_end, and get_replicas, on an index holding 10,000 objects, against one
  dict lookup under a lock.

Each benchmark asserts what it measured is right (record round trip, allocator back to one block);
speed is reported by pytest-benchmark, never asserted. Compare ratios within one run: the
machine is shared.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from mooncake_store import codec
from mooncake_store._engine import ffi, lib
from mooncake_store.config import Config
from mooncake_store.master.allocator import Allocator
from mooncake_store.master.index import ObjectIndex

KEY = b"model/llama-3.1-8b/tp3/0123456789abcdef0123456789abcdef"
VALUE = 4096
SEGMENT = 64 << 20


# ---- allocator ----------------------------------------------------------------------------------
@pytest.fixture
def filled_allocator() -> Allocator:
    """Half full, with holes: every other 4 KiB block of the first half is free."""
    a = Allocator(SEGMENT)
    offs = [a.alloc(VALUE) for _ in range(SEGMENT // VALUE // 2)]
    for off in offs[::2]:
        a.free(off, VALUE)
    return a


def test_allocator_alloc_free(benchmark, filled_allocator):
    a = filled_allocator
    used = a.used

    def pair() -> None:
        a.free(a.alloc(VALUE), VALUE)

    benchmark.group = "allocator"
    benchmark(pair)
    assert a.used == used


def test_allocator_alloc_free_mixed_sizes(benchmark):
    a = Allocator(SEGMENT)
    sizes = [4096, 65536, 262144, 1 << 20, 4160, 70000]

    def cycle() -> None:
        offs = [(a.alloc(s), s) for s in sizes]
        for off, s in reversed(offs):
            a.free(off, s)

    benchmark.group = "allocator"
    benchmark(cycle)
    assert a.used == 0 and a.free_blocks() == [(0, a.capacity)]   # fully coalesced


def test_ceiling_dict_insert_delete(benchmark):
    d: dict[int, int] = {}

    def pair() -> None:
        d[12345] = VALUE
        del d[12345]

    benchmark.group = "allocator"
    benchmark(pair)
    assert not d


# ---- object header ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def record_buffers():
    region = np.zeros(codec.header_size(len(KEY)) + VALUE, np.uint8)
    value = np.random.default_rng(0).integers(0, 256, VALUE, dtype=np.uint8)
    out = np.zeros(VALUE, np.uint8)
    return region, value, out


def _p(arr: np.ndarray):
    return ffi.cast("char *", arr.ctypes.data)


def test_record_write(benchmark, record_buffers):
    region, value, out = record_buffers
    r, v = _p(region), _p(value)
    benchmark.group = "header 4 KiB"
    n = benchmark(lib.mcs_rec_write, r, len(region), KEY, len(KEY), v, VALUE, 7, 0, 0, 0)
    assert n == len(region)
    assert lib.mcs_rec_read(r, len(region), KEY, len(KEY), _p(out), VALUE, ffi.NULL) == VALUE
    assert np.array_equal(out, value)


def test_record_read_verified(benchmark, record_buffers):
    region, value, out = record_buffers
    r = _p(region)
    assert lib.mcs_rec_write(r, len(region), KEY, len(KEY), _p(value), VALUE, 7, 0, 0, 0) > 0
    out[:] = 0
    benchmark.group = "header 4 KiB"
    n = benchmark(lib.mcs_rec_read, r, len(region), KEY, len(KEY), _p(out), VALUE, ffi.NULL)
    assert n == VALUE and np.array_equal(out, value)
    region[-1] ^= 0xFF                                  # a flipped value byte is caught
    assert lib.mcs_rec_read(r, len(region), KEY, len(KEY), _p(out), VALUE, ffi.NULL) < 0
    region[-1] ^= 0xFF


def test_ceiling_memcpy_4k(benchmark, record_buffers):
    _, value, out = record_buffers
    benchmark.group = "header 4 KiB"
    benchmark(lib.mcs_copy, _p(out), _p(value), VALUE)
    assert np.array_equal(out, value)


def test_codec_encode_decode(benchmark):
    crc = lib.mcs_crc32c(0, b"x" * VALUE, VALUE)

    def roundtrip() -> codec.Header:
        return codec.decode_header(codec.encode_header(KEY, VALUE, crc, epoch=7))

    benchmark.group = "header (python codec)"
    h = benchmark(roundtrip)
    assert h.key == KEY and h.value_len == VALUE and h.value_crc == crc and h.epoch == 7


# ---- index ---------------------------------------------------------------------------------------------
@pytest.fixture
def index() -> ObjectIndex:
    idx = ObjectIndex(Config(lease_ttl_ms=0))
    idx.add_segment("seg", 1 << 30)
    for i in range(10_000):
        idx.put_start(f"obj/{i}", VALUE)
        idx.put_end(f"obj/{i}")
    return idx


def test_index_put_start_end(benchmark, index):
    counter = iter(range(10**9))

    def put() -> None:
        key = f"new/{next(counter)}"
        index.put_start(key, VALUE)
        index.put_end(key)
        index.remove(key)

    benchmark.group = "index"
    benchmark(put)
    assert len(index) == 10_000


def test_index_get_replicas(benchmark, index):
    benchmark.group = "index"
    look = benchmark(index.get_replicas, "obj/1234")
    assert look.size == VALUE and len(look.replicas) == 1


def test_ceiling_locked_dict_lookup(benchmark):
    d = {f"obj/{i}": i for i in range(10_000)}
    lock = threading.Lock()

    def lookup() -> int:
        with lock:
            return d["obj/1234"]

    benchmark.group = "index"
    assert benchmark(lookup) == 1234
