"""Hostile bytes against live servers on 127.0.0.1: the transfer engine's tcp
listener and the control-plane RPC server. They must refuse, count, and keep
serving well-behaved peers with the right bytes."""
from __future__ import annotations

import socket

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import boundaries as b
from fuzzcfg import N, fuzz_settings
from support import wire, zmtp
from support.net import drain_until_closed
from support.procs import rss_kib

from mooncake_store.rpc.client import RpcClient
from mooncake_store.rpc.protocol import pack_request
from mooncake_store.rpc.server import RpcServer
from mooncake_store.transfer import TransferEngine


@pytest.fixture(scope="module")
def transfer_server():
    te = TransferEngine("127.0.0.1", use_shm=False)
    region = np.random.default_rng(1).integers(0, 256, 1 << 16, dtype=np.uint8)
    te.register_memory(region.ctypes.data, region.nbytes)
    yield te, region
    te.close()


def test_transfer_server_random_streams(transfer_server):
    """Random byte streams after a good handshake, and garbage handshakes: the server
    never answers 0 to anything out of bounds, closes the connection, and still serves."""
    te, region = transfer_server
    base, size = region.ctypes.data, region.nbytes
    seeds = b.wire_seeds(base, size)

    @fuzz_settings(max(N // 5, 30))
    @given(st.one_of(st.binary(min_size=1, max_size=200),
                     st.tuples(st.sampled_from(seeds), st.integers(0, 39), st.binary(min_size=1, max_size=8))
                     .map(lambda t: t[0][:t[1]] + t[2] + t[0][t[1] + len(t[2]):])),
           st.booleans())
    def attack(stream, handshake):
        expect = te.check_wire_header(stream[:40]) if len(stream) >= 40 else None
        if expect == 0 and stream[6] in (1, 2):  # a valid write/read: not hostile
            return
        if handshake:
            s = wire.handshake(te.port)
        else:
            s = socket.create_connection(("127.0.0.1", te.port), timeout=5)
        with s:
            try:
                s.sendall(stream)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            assert drain_until_closed(s)

    before = te.stats()
    attack()
    good = TransferEngine(use_shm=False)
    try:
        out = np.zeros(4096, dtype=np.uint8)
        assert good.transfer_sync_read(te.get_local_hostname(), out, base + 512, 4096) == 0
        assert np.array_equal(out, region[512:4608])
    finally:
        good.close()
    after = te.stats()
    assert after["bad_requests"] > before["bad_requests"]
    assert after["conns_active"] <= 2


@pytest.fixture
def rpc_server():
    srv = RpcServer({"echo": lambda x: x, "add": lambda a, c: a + c}).start()
    yield srv
    srv.close()


def test_rpc_server_survives_hostile_frames(rpc_server):
    srv = rpc_server
    sock = srv._ctx.socket(__import__("zmq").DEALER)
    sock.setsockopt(__import__("zmq").LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{srv.port}")
    sent = 0

    @fuzz_settings(max(N // 3, 30))
    @given(st.one_of(st.binary(max_size=300), st.sampled_from(b.HUGE_CLAIMS + b.RPC_SEEDS),
                     st.builds(pack_request, st.integers(0, 2**63), st.text(max_size=10),
                               st.lists(st.integers(-2**63, 2**63), max_size=3), st.text(max_size=5))))
    def attack(frame):
        nonlocal sent
        sock.send(frame)
        sent += 1

    try:
        attack()
        with RpcClient(srv.address, timeout_ms=5000) as c:
            assert c.call("add", 2, 3) == 5
            assert c.call("echo", b"\x00\xff") == b"\x00\xff"
        assert srv.bad_requests > 0
    finally:
        sock.close(0)


@pytest.mark.parametrize("claimed", [2**63, 2**63 + 12345, 2**64 - 1])
def test_rpc_frame_claiming_2_63_bytes_is_refused_before_allocation(rpc_server, claimed):
    """A ZMTP frame header claiming 2^63 bytes: the connection is dropped, nothing that
    size is allocated (RSS stays flat), and the server keeps answering."""
    rss0 = rss_kib()
    with zmtp.greet(rpc_server.port) as s:
        s.sendall(zmtp.long_frame_header(claimed) + b"\x00" * 64)
        assert drain_until_closed(s)
    with RpcClient(rpc_server.address, timeout_ms=5000) as c:
        assert c.call("add", 1, 1) == 2
    assert rss_kib() - rss0 < 64 * 1024
