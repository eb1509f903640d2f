"""Batches of small puts through block reservations (master/reserve.py, client/put_batch.py):
records back to back in one block, named with one batch_put_commit; real master, node and
client processes on 127.0.0.1."""
from __future__ import annotations

import hashlib
import time

import numpy as np

from mooncake_store import ReplicateConfig
from mooncake_store.client import put_batch
from mooncake_store.client.put_batch import RESERVED_PUT_MAX
from mooncake_store.errors import TransferFailed

from support.cluster import client_that_dies, read_elsewhere, store, wait_nodes
from support.procs import wait_until

# Takes a block for a batch and dies while writing it.
DIES_WRITING = """
import os, sys
from mooncake_store import Store
from mooncake_store.client import put_batch
s = Store(master=sys.argv[1], global_segment_size=0, rpc_timeout_ms=5000)
put_batch._write_block = lambda *args: os._exit(0)
s.batch_put([f"dead/{i}" for i in range(8)], [b"x" * 3000] * 8)
os._exit(1)
"""


def _value(i: int, n: int) -> bytes:
    return np.random.default_rng(i).integers(0, 256, n, dtype=np.uint8).tobytes()


def _settled(s) -> bool:   # no tombstone line held while `used` is compared
    st = s.stats()
    return st["zaps_done"] + st["zaps_skipped"] + st["zaps_dropped"] == st["zaps_queued"]


def test_small_batches_commit_into_blocks_andread_elsewhere(cluster):
    m = cluster.master()
    want: dict[str, bytes] = {}
    # One client writes into its own segment (the only one), the other (segment-less)
    # into that one too, its records assembled here and sent as one transfer.
    with store(m.addr, global_segment_size=32 << 20) as own, store(m.addr) as bare:
        for name, s in (("own", own), ("bare", bare)):
            for b in range(4):
                # Sizes and key lengths vary, so records have different lengths.
                keys = [f"{name}/{b}/{i}" + "k" * (i % 7) for i in range(40)]
                vals = [_value(b * 100 + i, 1 + (i * 997 + b * 131) % 9000) for i in range(40)]
                before = s.stats()["reserved_puts"]
                assert s.batch_put(keys, vals) == [0] * 40
                want.update(zip(keys, vals))
                assert s.stats()["reserved_puts"] - before == 40
            st = s.stats()
            assert st["pending"] == 0 and st["reserved"] == 0
        # Raw addresses with sizes (the zero-copy batch), inside a registered buffer; one
        # running past it fails alone.
        arr = np.frombuffer(_value(9, 4 * 4096), dtype=np.uint8).copy()
        base = own.register_buffer(arr)
        assert own.batch_put_from(["p/0", "p/1"], [base, base + 4096], [4096, 4096]) == [0, 0]
        assert own.batch_put_from(["p/2", "p/3"], [base + 2 * 4096, base + 3 * 4096],
                                  [4096, 8192]) == [0, -600]
        want.update({f"p/{i}": arr[i * 4096:(i + 1) * 4096].tobytes() for i in range(3)})
        assert not own.exists("p/3")
        # Existing keys stay as they were (code 0, a no-op); one empty value fails alone;
        # a key given twice keeps its first value.
        old = "own/0/0"
        codes = own.batch_put([old, "own/x/1", "own/x/empty", "own/x/1"],
                              [b"new", b"first", b"", b"second"])
        assert codes == [0, 0, -600, 0]
        want["own/x/1"] = b"first"
        assert own.get(old) == want[old]
        # An upsert batch replaces values, through a block as well.
        before = own.stats()["reserved_puts"]
        assert own.batch_upsert(["own/1/1k", "own/1/2kk"], [b"u1", b"u2" * 3000]) == [0, 0]
        want["own/1/1k"], want["own/1/2kk"] = b"u1", b"u2" * 3000
        assert own.stats()["reserved_puts"] - before == 2
        # Large values go through a block written straight into the writer's own segment,
        # but keep the per-key path from a segment-less client, as placement options do.
        big = _value(7, RESERVED_PUT_MAX + 1)
        before = own.stats()["reserved_puts"]
        assert own.batch_put(["own/big", "own/small"], [big, b"s"]) == [0, 0]
        assert own.stats()["reserved_puts"] - before == 2
        before = own.stats()["reserved_puts"]
        assert bare.batch_put(["bare/big", "bare/small"], [big, b"s"]) == [0, 0]
        assert own.batch_put(["own/pin"], [b"p" * 100],
                             ReplicateConfig(with_hard_pin=True)) == [0]
        assert own.stats()["reserved_puts"] == before
        want.update({"own/big": big, "own/small": b"s", "own/pin": b"p" * 100,
                     "bare/big": big, "bare/small": b"s"})
        # With a second segment, a batch of small values still takes a block: the whole
        # batch on one segment, placed by free space, so batches spread over both.
        cluster.node(m.addr, dram="64MB")
        wait_nodes(m.addr, 2)
        landed = set()
        for b in range(24):   # all on one segment: ~1e-4 if the draws were fresh each run
            keys = [f"two/{b}/{i}" for i in range(16)]
            before = bare.stats()["reserved_puts"]
            assert bare.batch_put(keys, [_value(b, 2000)] * 16) == [0] * 16
            assert bare.stats()["reserved_puts"] - before == 16
            segs = {bare._index.stat(k)["replicas"][0][0]["segment"] for k in keys}
            assert len(segs) == 1
            landed |= segs
            want.update((k, _value(b, 2000)) for k in keys)
        assert len(landed) == 2
        # Larger values keep per-key placement over both, even from the segment's owner.
        keys = [f"big2/{i}" for i in range(24)]
        before = own.stats()["reserved_puts"]
        assert own.batch_put(keys, [big] * 24) == [0] * 24
        assert own.stats()["reserved_puts"] == before
        assert len({own._index.stat(k)["replicas"][0][0]["segment"] for k in keys}) == 2
        want.update((k, big) for k in keys)
        got = read_elsewhere(m.addr, list(want))
    assert got == {k: hashlib.sha256(v).hexdigest() for k, v in want.items()}


def test_late_or_failed_block_writes_fall_back_to_the_normal_path(cluster, monkeypatch):
    m = cluster.master(put_timeout_ms=600)
    cluster.node(m.addr)
    wait_nodes(m.addr, 1)
    real = put_batch._write_block
    with store(m.addr) as s:
        # A writer that stalls past put_timeout_ms: the master refuses the late commit (what
        # it wrote stays invisible) and the batch goes the normal way.
        def stalls(*args):
            time.sleep(1.0)
            real(*args)

        monkeypatch.setattr(put_batch, "_write_block", stalls)
        keys = [f"e/0/{i}" for i in range(10)]
        assert s.batch_put(keys, [b"a" * 4096] * 10) == [0] * 10
        st = s.stats()
        assert st["reserved_puts"] == 0 and st["reserved"] == 0 and st["objects"] == 10
        # A write that fails gives the block back at once (revoked), then the normal path.
        def fails(*args):
            raise TransferFailed("node gone")

        monkeypatch.setattr(put_batch, "_write_block", fails)
        assert s.batch_put([f"e/1/{i}" for i in range(10)], [b"b" * 4096] * 10) == [0] * 10
        st = s.stats()
        assert st["reserved_puts"] == 0 and st["reserved"] == 0 and st["objects"] == 20
        monkeypatch.setattr(put_batch, "_write_block", real)
        assert s.batch_put([f"e/2/{i}" for i in range(10)], [b"c" * 4096] * 10) == [0] * 10
        assert s.stats()["reserved_puts"] == 10
        for b, v in ((0, b"a"), (1, b"b"), (2, b"c")):
            assert all(s.get(f"e/{b}/{i}") == v * 4096 for i in range(10))
        # Every freed block record was tombstoned and the lines came back.
        wait_until(lambda: _settled(s), what="tombstones settled")


def test_block_of_a_killed_client_is_reclaimed(cluster):
    m, out = client_that_dies(cluster, DIES_WRITING, put_timeout_ms=800)
    with store(m.addr) as s:
        st = s.stats()
        assert st["reserved"] == 1 and st["objects"] == 0 and st["used"] >= 8 * 3000
        wait_until(lambda: s.stats()["reserved"] == 0, what="dead client's block reclaimed")
        wait_until(lambda: _settled(s), what="tombstones settled")
        after = s.stats()
        assert after["used"] == 0 and after["reclaimed_reservations"] == 1
        assert not any(s.batch_exists([f"dead/{i}" for i in range(8)]))
