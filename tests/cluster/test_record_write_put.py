"""Puts from a segment-less client over tcp are record writes (the engine checksums the
value as it sends it, the header follows): single and two replicas, striped values, and
RemoteData.write_replicas (several nodes at once) all read back byte-exact, and each
node's copy is a record the inventory scan accepts."""
from __future__ import annotations

import numpy as np

from mooncake_store import ReplicateConfig
from mooncake_store._engine import ffi
from mooncake_store.node.inventory import scan
from mooncake_store.transfer import TransferEngine

from support.cluster import store, wait_nodes

KiB, MiB = 1 << 10, 1 << 20


def _scanned(s, te: TransferEngine, key: str) -> int:
    """How many of key's replicas the inventory scan finds intact in the nodes' memory."""
    found = 0
    for replica in s._index.get_replicas(key).replicas:
        sl = replica[0]
        endpoint, base, _ = s._remote._where(sl.segment)
        mem = np.zeros(sl.length, np.uint8)
        assert te.transfer_sync_read(endpoint, mem, base + sl.offset, sl.length) == 0
        entries = scan(ffi.from_buffer(mem), mem.nbytes)
        found += [e[0] for e in entries] == [key] and entries[0][1:3] == [0, sl.length]
    return found


def test_puts_over_tcp_are_checked_records(cluster, monkeypatch):
    monkeypatch.setenv("MOONCAKE_SHM", "0")
    m = cluster.master()
    for _ in range(2):
        cluster.node(m.addr, dram="64MB")
    wait_nodes(m.addr, 2)
    rng = np.random.default_rng(5)
    values = {f"v{n}_{r}": (rng.integers(0, 256, n, dtype=np.uint8), r)
              for n in (64 * KiB, 300 * KiB, MiB + 100, 3 * MiB) for r in (1, 2)}
    with store(m.addr) as s, TransferEngine(use_shm=False, timeout_ms=5000) as te:
        for key, (v, r) in values.items():
            s.register_buffer(v.ctypes.data, v.nbytes)
            s.put_from(key, v.ctypes.data, v.nbytes, ReplicateConfig(replica_num=r))
        for key, (v, r) in values.items():
            assert s.get(key) == v.tobytes()
            assert _scanned(s, te, key) == r
        # A striped value (larger than the stripe size) over both nodes.
        big = rng.integers(0, 256, 9 * MiB, dtype=np.uint8).tobytes()
        s.put("striped", big)
        assert len(s._index.get_replicas("striped").replicas[0]) > 1
        assert s.get("striped") == big
        # The same record into two nodes at once.
        v = rng.integers(0, 256, 2 * MiB, dtype=np.uint8)
        reps = s._index.put_start("both", v.nbytes, ReplicateConfig(replica_num=2))
        assert len({r[0].segment for r in reps}) == 2
        s._remote.write_replicas(b"both", [r[0] for r in reps], ffi.from_buffer(v), v.nbytes,
                                 s._epoch, 0)
        s._index.put_end("both")
        assert s.get("both") == v.tobytes()
        assert _scanned(s, te, "both") == 2
