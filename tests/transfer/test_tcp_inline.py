"""The tcp inline lane: a batch of up to 4 slices and 2 MiB (a lone request, or a record's
header and value) runs in the submitting thread on the peer's inline connection
(csrc/transport_tcp.c). Same results and error codes as the streams; one connection reused;
a stalled peer fails within the timeout, once."""
from __future__ import annotations

import os
import signal
import time

import numpy as np

from mooncake_store.errors import ErrorCode
from mooncake_store.transfer import READ, WRITE, TransferEngine

from support.procs import run_threads
from support.transfer import sync_roundtrips

KiB = 1 << 10


def test_lone_small_requests_are_exact_and_reuse_one_connection(shared_target):
    base, size = shared_target.regions["plain"]
    before = shared_target.stats()["conns_accepted"]
    te = TransferEngine(use_shm=False, streams=2, timeout_ms=10_000)
    with te:
        rng = np.random.default_rng(5)
        sync_roundtrips(te, shared_target.name, base, size, rng, 150, 64 * KiB)
        # Larger than the inline cap: the streams, as before.
        big = rng.integers(0, 256, size=4 << 20, dtype=np.uint8)
        assert te.transfer_sync_write(shared_target.name, big, base, big.nbytes) == 0
        back = np.zeros_like(big)
        assert te.transfer_sync_read(shared_target.name, back, base, big.nbytes) == 0
        assert np.array_equal(big, back)
    # 300 lone requests, yet only the streams' connections and one inline connection.
    assert shared_target.stats()["conns_accepted"] - before <= 2 + 1


def test_refused_lone_request_then_the_next_one_works(shared_target):
    base, size = shared_target.regions["plain"]
    te = TransferEngine(use_shm=False, timeout_ms=10_000)
    with te:
        buf = np.arange(4096, dtype=np.uint32).view(np.uint8)[:4096].copy()
        name = shared_target.name
        for _ in range(3):
            assert te.transfer_sync_read(name, buf, base + size - 100, 4096) == \
                ErrorCode.BUFFER_OVERFLOW
            assert te.transfer_sync_write(name, buf, 4096, 4096) == ErrorCode.INVALID_PARAMS
            assert te.transfer_sync_write(name, buf, base + 8192, 4096) == 0
            out = np.zeros(4096, dtype=np.uint8)
            assert te.transfer_sync_read(name, out, base + 8192, 4096) == 0
            assert np.array_equal(buf, out)


def test_lone_requests_from_many_threads(shared_target):
    """One thread holds the inline connection at a time; the others go through the
    streams meanwhile. Every result is exact."""
    base, size = shared_target.regions["plain"]
    te = TransferEngine(use_shm=False, timeout_ms=10_000)
    def work(i: int) -> None:
        rng = np.random.default_rng(40 + i)
        at = base + i * (size // 4)
        for _ in range(100):
            n = int(rng.integers(1, 16 * KiB))
            src = rng.integers(0, 256, size=n, dtype=np.uint8)
            assert te.transfer_sync_write(shared_target.name, src, at, n) == 0
            out = np.zeros(n, dtype=np.uint8)
            bid = te.submit(shared_target.name, READ, [out], [at], [n])
            assert [s.state for s in te.wait(bid)] == ["completed"]
            assert np.array_equal(src, out)

    with te:
        run_threads(work, 4)


def test_stalled_peer_times_out_once_then_recovers(make_target):
    target = make_target(size=8 << 20)
    base, _ = target.regions["plain"]
    te = TransferEngine(use_shm=False, timeout_ms=1000)
    with te:
        buf = np.ones(4096, dtype=np.uint8)
        assert te.transfer_sync_write(target.name, buf, base, 4096) == 0
        os.kill(target.proc.pid, signal.SIGSTOP)
        time.sleep(0.3)   # the signal lands asynchronously
        try:
            t0 = time.monotonic()
            rc = te.transfer_sync_read(target.name, buf, base, 4096)
            took = time.monotonic() - t0
        finally:
            os.kill(target.proc.pid, signal.SIGCONT)
        assert rc == ErrorCode.RPC_TIMEOUT and took < 5   # not twice the timeout, no hang
        out = np.zeros(4096, dtype=np.uint8)
        assert te.transfer_sync_read(target.name, out, base, 4096) == 0
        assert np.array_equal(out, np.ones(4096, dtype=np.uint8))


def test_header_and_value_batches_are_exact(shared_target):
    """Two requests in one batch (a small header, a value up to 1 MiB), as a record read or
    write sends them: each lands at its own place, both ways, including a refused one."""
    base, size = shared_target.regions["plain"]
    name = shared_target.name
    te = TransferEngine(use_shm=False, streams=2, timeout_ms=10_000)
    rng = np.random.default_rng(11)
    with te:
        for n in (1, 4095, 64 * KiB + 1, 1 << 20):
            hdr = rng.integers(0, 256, size=64, dtype=np.uint8)
            val = rng.integers(0, 256, size=n, dtype=np.uint8)
            bid = te.submit(name, WRITE, [hdr, val], [base, base + 64], [64, n])
            assert [s.state for s in te.wait(bid)] == ["completed", "completed"]
            h2, v2 = np.zeros_like(hdr), np.zeros_like(val)
            bid = te.submit(name, READ, [h2, v2], [base, base + 64], [64, n])
            assert [(s.state, s.bytes) for s in te.wait(bid)] == [("completed", 64),
                                                                  ("completed", n)]
            assert np.array_equal(hdr, h2) and np.array_equal(val, v2)
        # A refused first request does not take the second one with it.
        out = np.zeros(4096, dtype=np.uint8)
        bid = te.submit(name, READ, [out, v2], [base + size - 100, base + 64], [4096, 1 << 20])
        st = te.wait(bid)
        assert (st[0].state, st[0].code) == ("failed", ErrorCode.BUFFER_OVERFLOW)
        assert st[1].state == "completed" and np.array_equal(val, v2)


def test_stalled_peer_fails_a_two_request_batch_once(make_target):
    """Both requests of a header + value batch fail with the timeout, after one timeout."""
    target = make_target(size=8 << 20)
    base, _ = target.regions["plain"]
    te = TransferEngine(use_shm=False, timeout_ms=2000)
    with te:
        hdr, val = np.ones(64, dtype=np.uint8), np.ones(256 * KiB, dtype=np.uint8)
        assert te.transfer_sync_write(target.name, val, base, val.nbytes) == 0
        os.kill(target.proc.pid, signal.SIGSTOP)
        time.sleep(0.3)   # the signal lands asynchronously
        try:
            t0 = time.monotonic()
            st = te.wait(te.submit(target.name, READ, [hdr, val], [base, base + 64],
                                   [64, val.nbytes]))
            took = time.monotonic() - t0
        finally:
            os.kill(target.proc.pid, signal.SIGCONT)
        assert [s.code for s in st] == [ErrorCode.RPC_TIMEOUT] * 2
        assert took < 3.9   # one timeout, not one per request
        out = np.zeros(val.nbytes, dtype=np.uint8)
        assert te.transfer_sync_read(target.name, out, base, val.nbytes) == 0
        assert np.array_equal(out, np.ones(val.nbytes, dtype=np.uint8))
