"""Resource limits: keys, values, batches (Config fields) and the transfer engine's
per-request and per-connection bounds. Every refusal is a clear, typed error."""
from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from mooncake_store import Config, MooncakeDistributedStore, Store
from mooncake_store.errors import ErrorCode, InvalidParams
from mooncake_store.transfer import TransferEngine

from support.fixtures import no_ambient_secret  # noqa: F401 - autouse fixture, found by name
from support.net import recv_exact
from support.procs import rss_kib, wait_until
from support.wire import HDR, handshake, header


@pytest.fixture
def small():
    with Store(capacity="16MB", max_key_len=16, max_value_size=1024, max_batch_size=4) as s:
        yield s


def test_defaults_are_safe():
    c = Config.load(env={})
    assert c.max_key_len == 4096
    assert c.max_batch_size == 65536
    assert 0 < c.max_value_size <= 1 << 40


def test_key_length_limit(small):
    small.put("k" * 16, b"v")
    assert small.get("k" * 16) == b"v"
    with pytest.raises(InvalidParams, match="max_key_len"):
        small.put("k" * 17, b"v")
    # Counted in UTF-8 bytes, not characters.
    with pytest.raises(InvalidParams, match="17 bytes"):
        small.put("é" * 8 + "x", b"v")
    with pytest.raises(InvalidParams, match="empty"):
        small.put("", b"v")
    # Keys are checked before any work: a batch holding a bad key is a malformed call,
    # refused whole, and writes nothing.
    with pytest.raises(InvalidParams, match="max_key_len"):
        small.batch_put(["ok", "k" * 17], [b"v", b"v"])
    assert not small.exists("ok")


def test_default_key_limit_matches_the_record_format():
    with Store(capacity="16MB") as s:
        s.put("k" * 4096, b"v")
        assert s.get("k" * 4096) == b"v"
        with pytest.raises(InvalidParams, match="max_key_len"):
            s.put("k" * 4097, b"v")


def test_max_key_len_above_the_format_is_refused_clearly():
    with pytest.raises(InvalidParams, match="max_key_len"):
        with Store(capacity="16MB", max_key_len=8192) as s:
            s.put("k" * 5000, b"v")


def test_value_size_limit(small):
    small.put("a", b"x" * 1024)
    with pytest.raises(InvalidParams, match="max_value_size"):
        small.put("b", b"x" * 1025)
    with pytest.raises(InvalidParams, match="max_value_size"):
        small.put_parts("b", b"x" * 600, b"y" * 600)
    with pytest.raises(InvalidParams, match="max_value_size"):
        small.upsert("a", b"x" * 2000)
    assert small.get("a") == b"x" * 1024  # the refused upsert left the old value
    buf = np.zeros(4096, dtype=np.uint8)
    with pytest.raises(InvalidParams, match="max_value_size"):
        small.put_from("c", buf)
    with pytest.raises(InvalidParams, match="max_value_size"):
        small.put_tensor("t", torch.zeros(1000))
    assert small.batch_put(["d", "e"], [b"x" * 10, b"x" * 1025]) == [0, ErrorCode.INVALID_PARAMS]
    assert not small.exists("e")


def test_batch_size_limit(small):
    five = list("abcde")
    for call in (lambda: small.batch_put(five, [b"v"] * 5), lambda: small.batch_get(five),
                 lambda: small.batch_exists(five), lambda: small.batch_remove(five),
                 lambda: small.longest_prefix(five)):
        with pytest.raises(InvalidParams, match="max_batch_size"):
            call()
    assert small.batch_put(five[:4], [b"v"] * 4) == [0] * 4


def test_compat_face_returns_codes_for_limits():
    s = MooncakeDistributedStore()
    try:
        assert s.setup("127.0.0.1", "P2PHANDSHAKE", 16 << 20, 1 << 20, "tcp", "", "") == 0
        s.store.config.max_value_size = 1024  # the compat face takes limits from its Config
        assert s.put("k" * 5000, b"v") == ErrorCode.INVALID_PARAMS
        assert s.put("big", b"x" * 2048) == ErrorCode.INVALID_PARAMS
        assert s.put("ok", b"x" * 1024) == 0
    finally:
        s.close()


@pytest.mark.parametrize("field,value", [("max_key_len", -1), ("max_batch_size", -5),
                                         ("max_value_size", "-3"), ("max_value_size", "lots"),
                                         ("max_key_len", "4k")])
def test_bad_limit_values_name_the_field(field, value):
    with pytest.raises(InvalidParams, match=field):
        Config.load({field: value}, env={})


def test_limits_from_env_and_sizes():
    c = Config.load(env={"MOONCAKE_MAX_VALUE_SIZE": "16MB", "MOONCAKE_MAX_BATCH_SIZE": "8"})
    assert c.max_value_size == 16 << 20 and c.max_batch_size == 8


# ---- transfer engine --------------------------------------------------------------------------

def test_engine_option_bounds():
    for kw in ({"window": 0}, {"streams": 0}, {"slice_bytes": 100}, {"timeout_ms": 0},
               {"auth_token": "x" * 257}):
        with pytest.raises(InvalidParams):
            TransferEngine(**kw)


@pytest.fixture
def server():
    te = TransferEngine("127.0.0.1", use_shm=False, timeout_ms=500)
    region = np.arange(1 << 20, dtype=np.uint32).view(np.uint8)[: 1 << 20].copy()
    te.register_memory(region.ctypes.data, region.nbytes)
    yield te, region
    te.close()


def _conns_active(te, pred, what: str) -> None:
    """Until the server's open-connection count satisfies pred (15 s at most)."""
    wait_until(lambda: pred(te.stats()["conns_active"]), timeout=15.0, interval=0.05, what=what)


def test_single_request_length_is_capped(server):
    te, region = server
    base = region.ctypes.data
    big = TransferEngine(use_shm=False)
    try:
        s = handshake(te.port, timeout=10)
        with s:
            s.sendall(header(1, base, (64 << 20) + 1))  # READ
            resp = HDR.unpack(recv_exact(s, HDR.size))
            assert resp[3] == ErrorCode.INVALID_PARAMS and resp[7] == 0
    finally:
        big.close()


def test_silent_connections_are_dropped_after_the_timeout(server):
    """A peer that connects and says nothing holds a server thread only for timeout_ms."""
    te, _ = server
    socks = [socket.create_connection(("127.0.0.1", te.port), timeout=10) for _ in range(20)]
    try:
        _conns_active(te, lambda n: n >= 20, "20 connections accepted")
        _conns_active(te, lambda n: n == 0, "silent connections dropped")
    finally:
        for s in socks:
            s.close()


def test_pipelined_reads_without_reading_answers_stay_bounded(server):
    """2,000 pipelined 1 MiB reads (2 GiB of answers) from a peer that never reads:
    the server blocks on its socket, gives up after timeout_ms, and buffers nothing."""
    te, region = server
    base = region.ctypes.data
    rss0 = rss_kib()
    s = handshake(te.port, timeout=10)
    s.setblocking(False)
    sent = 0
    req = header(1, base, 1 << 20)  # READ
    try:
        for _ in range(2000):
            try:
                s.send(req)
                sent += 1
            except (BlockingIOError, OSError):
                break
        _conns_active(te, lambda n: n == 0, "the blocked connection dropped")
        assert rss_kib() - rss0 < 64 * 1024
    finally:
        s.close()
    good = TransferEngine(use_shm=False)
    try:
        out = np.zeros(1 << 16, dtype=np.uint8)
        assert good.transfer_sync_read(te.get_local_hostname(), out, base, out.nbytes) == 0
        assert np.array_equal(out, region[: 1 << 16])
    finally:
        good.close()
