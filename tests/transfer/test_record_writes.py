"""Record writes (mcs_batch_submit_recw): the value goes out with its CRC32C computed by
the thread that sends it, then the header with that CRC. Over tcp (inline lane, streams,
values cut into slices, many threads), shm and the local peer: the peer's bytes equal
mcs_rec_write's byte for byte, the record reads back verified (record reads) and the
inventory scan finds it. A write whose value is refused leaves no valid header, on the
inline lane and on the streams; malformed requests are refused at submit."""
from __future__ import annotations

import numpy as np
import pytest

from mooncake_store._engine import ffi, lib
from mooncake_store.codec import header_size
from mooncake_store.errors import ErrorCode, InvalidParams
from mooncake_store.node.inventory import scan
from mooncake_store.transfer import READ, TransferEngine

from support.procs import run_threads

KiB, MiB = 1 << 10, 1 << 20
SIZES = [100, 4 * KiB, 64 * KiB + 1, 1 * MiB, 1 * MiB + 5000, 3 * MiB + 17]


def value_of(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def reference(key: bytes, value: np.ndarray, epoch: int, flags: int) -> np.ndarray:
    out = np.zeros(header_size(len(key)) + value.nbytes, dtype=np.uint8)
    n = lib.mcs_rec_write(ffi.from_buffer(out), out.nbytes, key, len(key),
                          ffi.from_buffer(value), value.nbytes, epoch, 0, flags, 0)
    assert n == out.nbytes
    return out


class Records:
    """Record writes laid out back to back (64-byte aligned) from `base` in a peer."""

    def __init__(self, te: TransferEngine, peer: str, base: int) -> None:
        self.te, self.peer, self.base, self.at = te, peer, base, base
        self.items: list[tuple[bytes, np.ndarray, int, int, int]] = []  # key, value, remote, epoch, flags

    def plan(self, key: bytes, size: int, seed: int, epoch: int = 5, flags: int = 0) -> int:
        self.items.append((key, value_of(size, seed), self.at, epoch, flags))
        self.at += (header_size(len(key)) + size + 63) // 64 * 64
        return len(self.items) - 1

    def write(self, which: list[int], inline: bool = True) -> list[int]:
        its = [self.items[i] for i in which]
        epochs = {it[3] for it in its}
        assert len(epochs) == 1
        bid = self.te.submit_record_writes(
            self.peer, [it[1].ctypes.data for it in its], [it[2] for it in its],
            [it[1].nbytes for it in its], [it[0] for it in its], epoch=epochs.pop(),
            flags=[it[4] for it in its], keep=[it[1] for it in its], inline=inline)
        return self.te.wait_codes(bid)

    def peer_bytes(self) -> np.ndarray:
        out = np.zeros(self.at - self.base, dtype=np.uint8)
        assert self.te.transfer_sync_read(self.peer, out, self.base, out.nbytes) == 0
        return out

    def check(self, which: list[int]) -> None:
        """Byte-exact against mcs_rec_write; verified by record reads and the inventory scan."""
        mem = self.peer_bytes()
        for i in which:
            key, value, remote, epoch, flags = self.items[i]
            ref = reference(key, value, epoch, flags)
            off = remote - self.base
            assert np.array_equal(mem[off:off + ref.nbytes], ref), f"record {i} differs"
        outs = [np.zeros(self.items[i][1].nbytes, dtype=np.uint8) for i in which]
        bid = self.te.submit_records(self.peer, [o.ctypes.data for o in outs],
                                     [self.items[i][2] for i in which],
                                     [o.nbytes for o in outs], [self.items[i][0] for i in which],
                                     outs)
        assert self.te.wait_codes(bid) == [0] * len(which)
        assert all(np.array_equal(o, self.items[i][1]) for i, o in zip(which, outs))
        found = {e[0]: e for e in scan(ffi.from_buffer(mem), mem.nbytes)}
        for i in which:
            key, value, remote, _, flags = self.items[i]
            e = found[key.decode()]
            assert (e[1], e[3], e[4]) == (remote - self.base, value.nbytes, flags)


@pytest.mark.parametrize("slice_bytes", [1 * MiB, 4 * KiB])
def test_record_writes_over_tcp(shared_target, slice_bytes):
    base, _ = shared_target.regions["plain"]
    with TransferEngine(use_shm=False, slice_bytes=slice_bytes, timeout_ms=10_000) as te:
        recs = Records(te, shared_target.name, base)
        ids = [recs.plan(f"w{i}".encode(), n, i, flags=i % 3) for i, n in enumerate(SIZES)]
        ids.append(recs.plan(b"x" * 4000, 10 * KiB, 99))   # a header of 4 KiB + 64
        for i in ids[:4]:   # one at a time: the inline lane (with 1 MiB slices)
            assert recs.write([i]) == [0]
        assert recs.write(ids[4:6]) == [0, 0]          # the streams
        assert recs.write(ids[6:], inline=False) == [0]
        recs.check(ids)
        # Rewritten all at once, no inline lane, with another epoch: the newer one wins.
        recs.items = [(k, v, r, 9, f) for k, v, r, _, f in recs.items]
        assert recs.write(ids, inline=False) == [0] * len(ids)
        recs.check(ids)


def test_record_writes_from_many_threads(shared_target):
    """One caller holds the inline lane while the others' records go through the streams."""
    base, _ = shared_target.regions["plain"]
    with TransferEngine(use_shm=False, timeout_ms=10_000) as te:
        recs = Records(te, shared_target.name, base + 32 * MiB)
        ids = [recs.plan(f"t{i}".encode(), n, 50 + i) for i, n in enumerate(SIZES * 2)]

        def work(t: int) -> None:
            for r in range(6):   # 6 threads x 6 records from 2t: every record, most twice
                i = ids[(2 * t + r) % len(ids)]
                assert recs.write([i]) == [0]

        run_threads(work, 6)
        recs.check(ids)


@pytest.mark.parametrize("inline", [True, False])
@pytest.mark.parametrize("size", [4 * KiB, 1 * MiB, 3 * MiB])
def test_refused_value_leaves_no_header(shared_target, size, inline):
    """The value runs past the end of the peer's region: it is refused, and the header
    (which would fit) is never written, whether it rode behind the value on the inline
    connection or waited on the streams; slices of the value that did land stay headerless.
    The engine then writes fine again."""
    base, rsize = shared_target.regions["plain"]
    with TransferEngine(use_shm=False, slice_bytes=1 * MiB, timeout_ms=10_000) as te:
        key = b"torn"
        at = base + rsize - header_size(len(key)) - size + min(size // 2, 64 * KiB)
        at -= at % 64   # the value runs 1-64 KiB past the region's end, the header fits
        zero = np.zeros(header_size(len(key)), dtype=np.uint8)
        assert te.transfer_sync_write(shared_target.name, zero, at, zero.nbytes) == 0
        v = value_of(size, 7)
        bid = te.submit_record_writes(shared_target.name, [v.ctypes.data], [at], [size], [key],
                                      keep=v, inline=inline)
        # Refused; or, when the peer hung up before taking the whole payload, a failed send.
        assert te.wait_codes(bid)[0] in (int(ErrorCode.BUFFER_OVERFLOW),
                                         int(ErrorCode.TRANSFER_FAIL))
        hdr = np.zeros(zero.nbytes, dtype=np.uint8)
        assert te.transfer_sync_read(shared_target.name, hdr, at, hdr.nbytes) == 0
        assert not hdr.any()
        info = ffi.new("mcs_rec_info *")
        assert lib.mcs_rec_check_header(ffi.from_buffer(hdr), hdr.nbytes, key, len(key),
                                        info) != 0
        recs = Records(te, shared_target.name, base + 64 * MiB)
        ok = recs.plan(b"after", 256 * KiB, 8)
        assert recs.write([ok], inline=inline) == [0]
        recs.check([ok])


def test_a_refused_record_in_a_batch(shared_target):
    """One record of a streamed batch is refused. It reports the error and has no header;
    the others either land verified or (when they shared its connection, which the peer
    closes on a refusal without reading the rest, failing the sender's whole run) fail
    with no valid header either."""
    base, rsize = shared_target.regions["plain"]
    with TransferEngine(use_shm=False, timeout_ms=10_000) as te:
        recs = Records(te, shared_target.name, base + 72 * MiB)
        ids = [recs.plan(f"m{i}".encode(), 512 * KiB, 60 + i) for i in range(3)]
        zero = np.zeros(recs.at - recs.base, dtype=np.uint8)
        assert te.transfer_sync_write(recs.peer, zero, recs.base, zero.nbytes) == 0
        v = value_of(1 * MiB, 9)
        bad_at = base + rsize - 64 * KiB
        bid = te.submit_record_writes(
            shared_target.name, [recs.items[i][1].ctypes.data for i in ids] + [v.ctypes.data],
            [recs.items[i][2] for i in ids] + [bad_at], [512 * KiB] * 3 + [v.nbytes],
            [recs.items[i][0] for i in ids] + [b"bad"], epoch=5, keep=[recs.items, v])
        codes = te.wait_codes(bid)
        assert codes[3] in (int(ErrorCode.BUFFER_OVERFLOW), int(ErrorCode.TRANSFER_FAIL))
        if any(codes[i] == 0 for i in ids):
            recs.check([i for i in ids if codes[i] == 0])
        mem = recs.peer_bytes()
        info = ffi.new("mcs_rec_info *")
        for i in ids:
            if codes[i] != 0:
                off = recs.items[i][2] - recs.base
                assert lib.mcs_rec_check_header(ffi.from_buffer(mem[off:]), mem.nbytes - off,
                                                ffi.NULL, 0, info) != 0


def test_record_writes_over_shm_and_the_local_peer():
    with TransferEngine("127.0.0.1") as owner, TransferEngine() as writer:
        managed = owner.allocate_managed_buffer(16 * MiB)
        for te, at in ((writer, managed), (owner, managed + 8 * MiB)):
            recs = Records(te, owner.get_local_hostname(), at)
            ids = [recs.plan(f"s{i}".encode(), n, 200 + i, flags=1) for i, n in
                   enumerate(SIZES[:5])]
            assert recs.write(ids) == [0] * len(ids)
            recs.check(ids)
        assert writer.transport(owner.get_local_hostname()) == "shm"


def test_bad_record_writes_are_refused(shared_target):
    base, _ = shared_target.regions["plain"]
    peer = shared_target.name
    with TransferEngine(use_shm=False, timeout_ms=10_000) as te:
        v = value_of(64, 1)
        a = v.ctypes.data
        for args in (([a], [base], [64], [b""]),            # empty key
                     ([a], [base], [64], [b"k" * 5000]),    # key too long
                     ([a], [base], [0], [b"k"]),            # empty value
                     ([0], [base], [64], [b"k"]),           # no source
                     ([a], [0], [64], [b"k"]),              # no target
                     ([a], [-1], [64], [b"k"]),             # not an address
                     ([a], [2 ** 64 - 128], [64], [b"k"]),  # record wraps around
                     ([a], [base, base], [64], [b"k"])):    # lengths differ
            with pytest.raises(InvalidParams):
                te.submit_record_writes(peer, *args)
        with pytest.raises(InvalidParams):
            te.submit_record_writes(peer, [a], [base], [64], [b"k"], flags=256)
        with pytest.raises(InvalidParams):
            te.submit_record_writes(peer, [a], [base], [64], [b"k"], epoch=-1)
        # Unknown submit flags are refused by the C API.
        req = ffi.new("mcs_request[]", 1)
        req[0].opcode, req[0].local, req[0].remote, req[0].length = READ, a, base, 64
        assert lib.mcs_batch_submit(te._e, te._peer(peer), req, 1, 2) == ErrorCode.INVALID_PARAMS
        # A bad peer number is refused, not looked up.
        rw = ffi.new("mcs_recw_request[]", 1)
        rw[0].value, rw[0].remote, rw[0].value_len = a, base, 64
        kb = ffi.new("char[]", b"k")
        rw[0].key, rw[0].key_len = kb, 1
        for pid in (-1, 1024, 1 << 30):
            assert lib.mcs_batch_submit_recw(te._e, pid, rw, 1, 0) == ErrorCode.INVALID_PARAMS


def test_no_inline_overlaps_peers(make_target):
    """inline=False returns before the transfer is done, so batches to two peers are both
    in flight before either is waited on; both land."""
    a, b = make_target(), make_target()
    with TransferEngine(use_shm=False, timeout_ms=10_000) as te:
        v = value_of(1 * MiB, 3)
        bids = [(t, te.submit(t.name, lib.MCS_OP_WRITE, [v], [t.regions["plain"][0]], [v.nbytes],
                              inline=False)) for t in (a, b)]
        for t, bid in bids:
            assert [s.state for s in te.wait(bid)] == ["completed"]
            assert t.crc(t.regions["plain"][0], v.nbytes) == lib.mcs_crc32c(0, ffi.from_buffer(v),
                                                                            v.nbytes)
