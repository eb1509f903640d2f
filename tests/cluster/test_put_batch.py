"""Batch puts from a segment-less client (client/put_batch.py): every node's records in
engine batches submitted as they are built, all in flight at once; real master and node
processes on 127.0.0.1."""
from __future__ import annotations

import signal

import numpy as np

from mooncake_store import ReplicateConfig
from mooncake_store.client import put_batch

from support.cluster import store, wait_nodes


def _value(i: int, n: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, n, dtype=np.uint8)


def test_batch_put_from_across_nodes_byte_exact(cluster):
    m = cluster.master()
    for _ in range(3):
        cluster.node(m.addr, dram="32MB")
    wait_nodes(m.addr, 3)
    # Direct (>= 64 KiB, header built apart) and staged (< 64 KiB) records, more than a
    # chunk per node, and one value larger than a chunk.
    sizes = [300_000, 70_000, 1000, 65_536, 65_535, 1 << 20] * 6 + [put_batch.CHUNK_BYTES + 1]
    assert sum(sizes) > 3 * put_batch.CHUNK_BYTES
    keys = [f"w/{i:03d}" for i in range(len(sizes))]
    vals = [_value(i, n) for i, n in enumerate(sizes)]
    with store(m.addr) as s, store(m.addr) as other:
        s.put("w/000", b"first value stays")
        codes = s.batch_put_from(keys + ["w/empty"], vals + [np.empty(0, np.uint8)])
        assert codes == [0] * len(keys) + [-600]
        assert other.get("w/000") == b"first value stays"        # an existing key: a no-op
        for k, v in zip(keys[1:], vals[1:]):
            assert other.get(k) == v.tobytes()
        segs = {other._index.stat(k)["replicas"][0][0]["segment"] for k in keys[1:]}
        assert len(segs) == 3                                      # spread over every node
        # Two replicas per key, on distinct nodes, both written by the batch.
        rc = ReplicateConfig(replica_num=2)
        assert s.batch_put_from(["r/a", "r/b", "r/a"], vals[:3], config=rc) == [0, 0, 0]
        for k, v in (("r/a", vals[0]), ("r/b", vals[1])):
            reps = other._index.stat(k)["replicas"]
            assert len({r[0]["segment"] for r in reps}) == 2
            assert other.get(k) == v.tobytes()
        # upsert through the same path replaces the value.
        assert s.batch_put_from(["r/a"], [vals[5]], upsert=True) == [0]
        assert other.get("r/a") == vals[5].tobytes()
        assert s.stats()["pending"] == 0


def test_failed_writes_are_revoked_and_others_stored(cluster):
    # A long node TTL keeps the killed node placed-on while the batch runs: its keys' writes
    # fail (connection refused), so they are revoked and report the failure; the rest land.
    m = cluster.master(node_ttl_ms=60_000)
    live = cluster.node(m.addr, dram="32MB")
    dead = cluster.node(m.addr, dram="32MB")
    wait_nodes(m.addr, 2)
    keys = [f"f/{i:02d}" for i in range(24)]
    vals = [_value(100 + i, 200_000 if i % 2 else 20_000) for i in range(24)]
    with store(m.addr) as s:
        s.put("warm", b"x" * 100_000)      # the client has met the nodes before
        used_before = {n: seg.used for n, seg in s._index.segments.items()}
        dead.kill(signal.SIGKILL)
        codes = s.batch_put_from(keys, vals)
        on_dead = [k for k, c in zip(keys, codes) if c != 0]
        assert on_dead and len(on_dead) < len(keys)          # placement used both nodes
        assert all(c in (-800, -900, -901) for c in codes if c != 0)
        for k, v, c in zip(keys, vals, codes):
            if c == 0:
                assert s.get(k) == v.tobytes()
            else:
                assert not s.exists(k)
        assert s.stats()["pending"] == 0
        # The revoked keys' space is free again: the dead node's segment is back where it was.
        dead_seg = _segment_of(s, dead)
        assert s._index.segments[dead_seg].used == used_before[dead_seg]
        # ... and reusable: the same keys go in once the dead node is out of placement.
        s.remove("warm", force=True)
        retry = s.batch_put_from(on_dead, [vals[keys.index(k)] for k in on_dead],
                                 config=ReplicateConfig(preferred_segment=_segment_of(s, live)))
        assert retry == [0] * len(on_dead)
        for k in on_dead:
            assert s.get(k) == vals[keys.index(k)].tobytes()


def _segment_of(s, node) -> str:
    for name, seg in s._index.segments.items():
        if seg.endpoint == node.endpoint:
            return name
    raise AssertionError(f"no segment of {node.endpoint}")
