"""Record reads (mcs_batch_submit_rec): one request per record, the header kept by the
engine, the value straight into the caller's memory, and header + value CRC checked by
the thread that receives the bytes. Over tcp (inline lane and streams, records cut into
slices), shm and the local peer: intact records complete, and a flipped value byte, a
flipped header byte, another key or another length end as CHECKSUM_MISMATCH (-801)
without disturbing the other records of the batch; a bad remote range stays a transfer
error."""
from __future__ import annotations

import numpy as np
import pytest

from mooncake_store._engine import ffi, lib
from mooncake_store.codec import header_size
from mooncake_store.errors import ErrorCode, InvalidParams
from mooncake_store.transfer import TransferEngine

from support.procs import run_threads

KiB, MiB = 1 << 10, 1 << 20
BAD = int(ErrorCode.CHECKSUM_MISMATCH)


def record(key: bytes, value: np.ndarray) -> np.ndarray:
    out = np.zeros(header_size(len(key)) + value.nbytes, dtype=np.uint8)
    n = lib.mcs_rec_write(ffi.from_buffer(out), out.nbytes, key, len(key),
                          ffi.from_buffer(value), value.nbytes, 7, 0, 0, 0)
    assert n == out.nbytes
    return out


class Layout:
    """Records written back to back (64-byte aligned) into a peer's region."""

    def __init__(self, te: TransferEngine, peer: str, base: int) -> None:
        self.te, self.peer, self.at = te, peer, base
        self.items: list[tuple[bytes, np.ndarray, int]] = []   # key, value, remote

    def put(self, key: bytes, size: int, seed: int) -> int:
        value = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
        rec = record(key, value)
        assert self.te.transfer_sync_write(self.peer, rec, self.at, rec.nbytes) == 0
        self.items.append((key, value, self.at))
        self.at += (rec.nbytes + 63) // 64 * 64
        return len(self.items) - 1

    def poke(self, addr: int, byte: int) -> None:
        assert self.te.transfer_sync_write(self.peer, bytes([byte]), addr, 1) == 0

    def read(self, which: list[int], keys: list[bytes] | None = None,
             lens: list[int] | None = None) -> tuple[list[int], list[np.ndarray]]:
        outs = [np.zeros(self.items[i][1].nbytes + 64, dtype=np.uint8) for i in which]
        keys = keys or [self.items[i][0] for i in which]
        lens = lens or [self.items[i][1].nbytes for i in which]
        bid = self.te.submit_records(self.peer, [o.ctypes.data for o in outs],
                                     [self.items[i][2] for i in which], lens, keys, outs)
        return self.te.wait_codes(bid), outs

    def exact(self, i: int, out: np.ndarray) -> bool:
        v = self.items[i][1]
        return bool(np.array_equal(out[:v.nbytes], v))


SIZES = [100, 4 * KiB, 64 * KiB, 256 * KiB, 1 * MiB, 1 * MiB + 5000, 3 * MiB + 17]


@pytest.mark.parametrize("slice_bytes", [1 * MiB, 4 * KiB])
def test_records_over_tcp_arrive_checked(shared_target, slice_bytes):
    base, _ = shared_target.regions["plain"]
    with TransferEngine(use_shm=False, slice_bytes=slice_bytes, timeout_ms=10_000) as te:
        lay = Layout(te, shared_target.name, base)
        ids = [lay.put(f"k{i}".encode(), n, i) for i, n in enumerate(SIZES)]
        # A key of 4000 bytes: with 4 KiB slices its header spans two slices.
        ids.append(lay.put(b"x" * 4000, 10 * KiB, 99))
        # One at a time (a small record: the inline lane) and all at once (the streams).
        for i in ids:
            codes, outs = lay.read([i])
            assert codes == [0] and lay.exact(i, outs[0])
        codes, outs = lay.read(ids)
        assert codes == [0] * len(ids)
        assert all(lay.exact(i, o) for i, o in zip(ids, outs))


def test_corrupt_records_fail_alone(shared_target):
    base, _ = shared_target.regions["plain"]
    with TransferEngine(use_shm=False, timeout_ms=10_000) as te:
        lay = Layout(te, shared_target.name, base + 32 * MiB)
        ids = [lay.put(f"c{i}".encode(), n, 100 + i) for i, n in enumerate(SIZES)]
        # Flip the last value byte of record 1, the first of record 4, a header byte of 5.
        for i, off in ((1, -1), (4, 0)):
            key, value, remote = lay.items[i]
            at = remote + header_size(len(key)) + (value.nbytes - 1 if off < 0 else 0)
            lay.poke(at, int(value[off]) ^ 0x40)
        lay.poke(lay.items[5][2] + 20, 0xEE)
        codes, outs = lay.read(ids)
        want = [BAD if i in (1, 4, 5) else 0 for i in ids]
        assert codes == want
        assert all(lay.exact(i, o) for i, o, c in zip(ids, outs, codes) if c == 0)
        for i in (1, 4, 5):   # alone (the inline lane for the small ones) too
            assert lay.read([i])[0] == [BAD]
        # Intact bytes, but another key or another value length than the header's.
        assert lay.read([0], keys=[b"c9"])[0] == [BAD]
        assert lay.read([2], lens=[SIZES[2] - 64])[0] == [BAD]


def test_record_reads_from_many_threads(shared_target):
    """One caller holds the inline lane; the others' lone reads go through the streams
    meanwhile. Every record arrives checked and exact, the damaged one fails every time."""
    base, _ = shared_target.regions["plain"]
    with TransferEngine(use_shm=False, timeout_ms=10_000) as te:
        lay = Layout(te, shared_target.name, base + 48 * MiB)
        ids = [lay.put(f"t{i}".encode(), n, 300 + i) for i, n in enumerate(SIZES)]
        key, value, remote = lay.items[2]
        lay.poke(remote + header_size(len(key)) + 7, int(value[7]) ^ 2)

        def work(t: int) -> None:
            for r in range(12):
                i = ids[(t + r) % len(ids)]
                codes, outs = lay.read([i])
                assert codes == [BAD if i == 2 else 0]
                assert i == 2 or lay.exact(i, outs[0])

        run_threads(work, 6)


def test_bad_ranges_stay_transfer_errors(shared_target):
    base, size = shared_target.regions["plain"]
    with TransferEngine(use_shm=False, timeout_ms=10_000) as te:
        lay = Layout(te, shared_target.name, base + 64 * MiB)
        ok = lay.put(b"fine", 8 * KiB, 3)
        out = np.zeros(8 * KiB, dtype=np.uint8)
        bid = te.submit_records(shared_target.name, [out.ctypes.data], [base + size - 4096],
                                [8 * KiB], [b"fine"], out)
        assert te.wait_codes(bid) == [int(ErrorCode.BUFFER_OVERFLOW)]
        codes, outs = lay.read([ok])   # the lane reconnects after the refusal
        assert codes == [0] and lay.exact(ok, outs[0])
        for bad in ([b""], [b"k" * 5000]):
            with pytest.raises(InvalidParams):
                te.submit_records(shared_target.name, [out.ctypes.data], [base], [64], bad)
        with pytest.raises(InvalidParams):
            te.submit_records(shared_target.name, [out.ctypes.data], [base], [0], [b"k"])


def test_records_over_shm_and_the_local_peer():
    with TransferEngine("127.0.0.1") as owner, TransferEngine() as reader:
        managed = owner.allocate_managed_buffer(16 * MiB)
        for te, peer in ((reader, owner.get_local_hostname()),
                         (owner, owner.get_local_hostname())):
            lay = Layout(te, peer, managed)
            ids = [lay.put(f"s{i}".encode(), n, 200 + i) for i, n in enumerate(SIZES)]
            codes, outs = lay.read(ids)
            assert codes == [0] * len(ids)
            assert all(lay.exact(i, o) for i, o in zip(ids, outs))
            key, value, remote = lay.items[3]
            lay.poke(remote + header_size(len(key)) + 1000, int(value[1000]) ^ 1)
            assert lay.read(ids)[0] == [BAD if i == 3 else 0 for i in ids]
        assert reader.transport(owner.get_local_hostname()) == "shm"
