"""The tcp request parser under hostile input: never crashes, refuses what is
malformed or out of bounds with a code, closes that connection, counts it, and
keeps serving a well-behaved peer. MCS_FUZZ_EXAMPLES raises the case count."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mooncake_store.errors import ErrorCode
from mooncake_store.transfer import TransferEngine

from support import wire as wc

N = int(os.environ.get("MCS_FUZZ_EXAMPLES", "2000"))
FUZZ = settings(max_examples=N, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def server():
    te = TransferEngine("127.0.0.1")
    region = np.zeros(1 << 20, dtype=np.uint8)
    assert te.register_memory(region.ctypes.data, region.nbytes) == 0
    yield te, region
    te.close()


def _fields(region_addr):
    near = st.integers(region_addr - 4096, region_addr + (1 << 20) + 4096)
    return st.tuples(
        st.sampled_from([wc.MAGIC, wc.MAGIC, wc.MAGIC, 0, 0xFFFFFFFF]),
        st.sampled_from([1, 1, 1, 0, 2]),
        st.sampled_from([1, 2, 3, 0, 4, 0x81, 0xFFFF]),
        st.sampled_from([0, 0, 0, -1]),
        st.sampled_from([0, 0, 0, 7]),
        st.one_of(near, st.integers(0, 2**64 - 1)),
        st.one_of(st.integers(0, 8192), st.integers(0, 2**64 - 1)),
    )


def test_parser_agrees_with_the_bounds(server):
    te, region = server
    base = region.ctypes.data

    @FUZZ
    @given(_fields(base))
    def check(f):
        magic, version, op, status, reserved, addr, length = f
        rc = te.check_wire_header(wc.header(op, addr, length, magic=magic, version=version,
                                            status=status, reserved=reserved))
        valid_struct = (magic == wc.MAGIC and version == 1 and status == 0 and reserved == 0
                        and op in (1, 2, 3, 4))
        if not valid_struct:
            assert rc == ErrorCode.TRANSFER_FAIL
        elif op == 3:
            assert rc == (0 if addr == 0 and length == 0 else ErrorCode.INVALID_PARAMS)
        elif op == 4:  # rdma setup: refused by an engine without rdma
            assert rc == ErrorCode.INVALID_PARAMS
        elif length == 0 or length > 64 << 20:
            assert rc == ErrorCode.INVALID_PARAMS
        elif not base <= addr < base + region.nbytes:
            assert rc == ErrorCode.INVALID_PARAMS
        elif addr + length > base + region.nbytes:
            assert rc == ErrorCode.BUFFER_OVERFLOW
        else:
            assert rc == 0

    check()


def test_live_server_survives_hostile_requests(server):
    te, region = server
    base = region.ctypes.data
    region[:] = np.arange(region.nbytes, dtype=np.uint64).astype(np.uint8)
    good = TransferEngine(use_shm=False)
    peer = te.get_local_hostname()
    before = te.stats()["bad_requests"]
    sent_bad = 0

    @settings(max_examples=max(N // 10, 50), deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(_fields(base), st.binary(max_size=64))
    def attack(f, tail):
        nonlocal sent_bad
        magic, version, op, status, reserved, addr, length = f
        hdr = wc.header(op, addr, length, magic=magic, version=version, status=status,
                        reserved=reserved)
        expect = te.check_wire_header(hdr)
        s, vst = wc.connect(te.port)
        assert vst == 0
        try:
            s.settimeout(5)
            # Writes that are valid would wait for a payload; send only what is refused.
            if expect == 0 and op in (1, 2):
                return
            s.sendall(hdr + tail)
            resp = wc.recv_exact(s, 40)
            _, _, rop, rstatus, _, _, _, rlen = wc.HDR.unpack(resp)
            assert rstatus == expect
            if expect != 0:
                sent_bad += 1
                assert rlen == 0
                with pytest.raises((ConnectionError, OSError)):
                    for _ in range(100):  # bounded: the server must close
                        if not s.recv(4096):
                            raise ConnectionError("closed")
        finally:
            s.close()

    try:
        attack()
        # A garbage handshake and a half header must not hurt either.
        for junk in (b"", b"\x00" * 10, os.urandom(200)):
            with socket.create_connection(("127.0.0.1", te.port), timeout=5) as s:
                s.sendall(junk)
        out = np.zeros(4096, dtype=np.uint8)
        assert good.transfer_sync_read(peer, out, base + 100, 4096) == 0
        assert np.array_equal(out, region[100:4196])
        assert te.stats()["bad_requests"] - before == sent_bad
    finally:
        good.close()
