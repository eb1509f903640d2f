"""Engine core: registration table, batches, local peer, wire header checks, HMAC."""
from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pytest

from mooncake_store._engine import ffi, lib
from mooncake_store.errors import ErrorCode, InvalidParams, StoreError
from mooncake_store.transfer import READ, WRITE, TransferEngine, split_target

from support.wire import header


@pytest.fixture
def te():
    with TransferEngine("127.0.0.1") as e:
        yield e


def test_register_overlap_and_unregister(te):
    buf = np.zeros(1 << 20, dtype=np.uint8)
    a = buf.ctypes.data
    assert te.register_memory(a, 4096) == 0
    assert te.register_memory(a + 8192, 4096) == 0
    assert te.register_memory(a + 4095, 2) == ErrorCode.INVALID_PARAMS      # overlaps the first
    assert te.register_memory(a + 8191, 1) == 0                             # touches, no overlap
    assert te.register_memory(a - 10, 11) == ErrorCode.INVALID_PARAMS       # overlaps from below
    assert te.register_memory(a, 0) == ErrorCode.INVALID_PARAMS
    assert te.stats()["regions"] == 3
    assert te.unregister_memory(a + 1) == ErrorCode.INVALID_PARAMS          # not a base
    assert te.unregister_memory(a) == 0
    assert te.unregister_memory(a) == ErrorCode.INVALID_PARAMS
    assert te.register_memory(a, 4096) == 0                                 # free again
    assert te.batch_register_memory([a + 20000, a + 30000], [100, 100]) == 0
    assert te.batch_unregister_memory([a + 20000, a + 30000]) == 0


def test_register_1gib_is_cheap(te):
    # Registration only records the range (no page touching); a 1 GiB range of
    # address space that is never accessed must register.
    import mmap
    m = mmap.mmap(-1, 1 << 30)
    try:
        addr = int(ffi.cast("uintptr_t", ffi.from_buffer(m)))
        assert te.register_memory(addr, 1 << 30) == 0
        assert te.stats()["registered_bytes"] == 1 << 30
        assert te.unregister_memory(addr) == 0
    finally:
        m.close()


def test_local_peer_copies_and_checks_bounds(te):
    remote = np.arange(1 << 16, dtype=np.uint8)
    assert te.register_memory(remote.ctypes.data, remote.nbytes) == 0
    me = te.get_local_hostname()
    assert te.transport(me) == "local"
    out = np.zeros(1000, dtype=np.uint8)
    assert te.transfer_sync_read(me, out, remote.ctypes.data + 5, 1000) == 0
    assert np.array_equal(out, remote[5:1005])
    assert te.transfer_sync_write(me, np.full(10, 9, np.uint8), remote.ctypes.data, 10) == 0
    assert (remote[:10] == 9).all()
    assert te.transfer_sync_read(me, out, remote.ctypes.data + remote.nbytes - 1, 2) == \
        ErrorCode.BUFFER_OVERFLOW
    assert te.transfer_sync_read(me, out, 12345, 10) == ErrorCode.INVALID_PARAMS


def test_batch_status_and_errors(te):
    remote = np.zeros(1 << 16, dtype=np.uint8)
    te.register_memory(remote.ctypes.data, remote.nbytes)
    me = te.get_local_hostname()
    bufs = [np.full(100, i, np.uint8) for i in range(5)]
    addrs = [remote.ctypes.data + 100 * i for i in range(5)]
    bid = te.batch_transfer_async_write(me, bufs, addrs, [100] * 5)
    assert bid > 0
    st = te.status(bid)
    assert [s.state for s in st] == ["completed"] * 5 and [s.bytes for s in st] == [100] * 5
    assert te.get_batch_transfer_status([bid]) == 0
    with pytest.raises(InvalidParams):
        te.status(bid)                                    # freed by the wait
    with pytest.raises(InvalidParams):
        te.submit(me, READ, [bufs[0]], [addrs[0]], [100, 100])
    with pytest.raises(InvalidParams):
        te.submit(me, 7, [bufs[0]], [addrs[0]], [100])
    with pytest.raises(InvalidParams):
        te.submit(me, WRITE, [bufs[0]], [addrs[0]], [0])
    with pytest.raises(InvalidParams):
        te.submit(me, WRITE, [bufs[0]], [addrs[0]], [101])  # longer than the buffer
    with pytest.raises(InvalidParams):
        te.submit(me, READ, [b"readonly"], [addrs[0]], [8])  # cannot read into bytes
    assert te.batch_transfer_sync_read(me, [bufs[0]], [addrs[0]], [100, 1]) == ErrorCode.INVALID_PARAMS
    assert lib.mcs_batch_wait(te._e, 999, 0) == ErrorCode.INVALID_PARAMS


def test_bad_peer_names_and_unreachable_peer(te):
    for bad in ("nohost", "h:0", "h:99999", "h:x", ":80", 5):
        with pytest.raises(InvalidParams):
            split_target(bad)
    assert split_target("[::1]:80") == ("::1", 80)
    buf = np.zeros(10, np.uint8)
    # Nothing listens on port 1 of loopback: connection refused -> RPC_FAIL.
    assert te.transfer_sync_read("127.0.0.1:1", buf, 4096, 10) == ErrorCode.RPC_FAIL


def test_closed_engine_raises():
    te = TransferEngine()
    te.close()
    te.close()  # idempotent
    with pytest.raises(StoreError):
        te.register_memory(4096, 10)


def test_managed_buffer_roundtrip(te):
    addr = te.allocate_managed_buffer(1 << 20)
    assert te.stats()["regions"] == 1
    me = te.get_local_hostname()
    assert te.transfer_sync_write(me, b"x" * 64, addr + 10, 64) == 0
    out = bytearray(64)
    assert te.transfer_sync_read(me, out, addr + 10, 64) == 0 and out == b"x" * 64
    assert te.free_managed_buffer(addr, 1 << 20) == 0
    assert te.free_managed_buffer(addr, 1 << 20) == ErrorCode.INVALID_PARAMS
    assert te.stats()["regions"] == 0


def test_wire_header_checks(te):
    buf = np.zeros(4096, dtype=np.uint8)
    a = buf.ctypes.data
    te.register_memory(a, 4096)
    assert te.check_wire_header(header(1, a, 4096)) == 0
    assert te.check_wire_header(header(2, a + 4000, 96)) == 0
    assert te.check_wire_header(header(3)) == 0                                   # ping
    assert te.check_wire_header(header(1, a + 4000, 97)) == ErrorCode.BUFFER_OVERFLOW
    assert te.check_wire_header(header(1, a + 4096, 1)) == ErrorCode.INVALID_PARAMS
    assert te.check_wire_header(header(1, a, 0)) == ErrorCode.INVALID_PARAMS
    assert te.check_wire_header(header(1, a, 1 << 40)) == ErrorCode.INVALID_PARAMS
    assert te.check_wire_header(header(1, (1 << 64) - 10, 100)) == ErrorCode.INVALID_PARAMS
    assert te.check_wire_header(header(1, a, 10, magic=0)) == ErrorCode.TRANSFER_FAIL
    assert te.check_wire_header(header(1, a, 10, version=2)) == ErrorCode.TRANSFER_FAIL
    assert te.check_wire_header(header(9, a, 10)) == ErrorCode.TRANSFER_FAIL
    assert te.check_wire_header(header(1, a, 10, reserved=1)) == ErrorCode.TRANSFER_FAIL
    assert te.check_wire_header(header(1, a, 10)[:39]) == ErrorCode.INVALID_PARAMS


@pytest.mark.parametrize("key,msg", [(b"", b""), (b"k", b"abc"), (b"K" * 64, b"m" * 200),
                                     (b"long" * 40, b"x" * 1000), (b"\x00" * 3, bytes(range(256)))])
def test_hmac_sha256_matches_hashlib(key, msg):
    out = ffi.new("uint8_t[32]")
    lib.mcs_hmac_sha256(key, len(key), msg, len(msg), out)
    assert bytes(out) == hmac.new(key, msg, hashlib.sha256).digest()
    lib.mcs_sha256(msg, len(msg), out)
    assert bytes(out) == hashlib.sha256(msg).digest()
    assert lib.mcs_ct_equal(b"abcd", b"abcd", 4) == 1
    assert lib.mcs_ct_equal(b"abcd", b"abce", 4) == 0
