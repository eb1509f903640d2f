"""Reads over tcp are verified by the transfer engine as the bytes arrive: a node's copy
with a flipped value or header byte is never served. get / get_into / batch_get_into
fall back to the intact replica; with every copy damaged the read fails with
CHECKSUM_MISMATCH and the object is dropped."""
from __future__ import annotations

import numpy as np
import pytest

from mooncake_store import ReplicateConfig
from mooncake_store.codec import header_size
from mooncake_store.errors import ChecksumMismatch, ErrorCode
from mooncake_store.transfer import TransferEngine

from support.cluster import store, wait_nodes

KiB = 1 << 10
SIZES = {"small": 4 * KiB, "mid": 300 * KiB, "big": (1 << 20) + 100}


def _damage(s, te: TransferEngine, key: str, replica: int, where: str) -> None:
    """Flip one byte of a replica's value (or header) in the node's memory. Replicas are
    taken in segment order (lookups rotate their order)."""
    sl = sorted((r[0] for r in s._index.get_replicas(key).replicas),
                key=lambda x: x.segment)[replica]
    endpoint, base, _ = s._remote._where(sl.segment)
    hlen = header_size(len(key.encode()))
    at = base + sl.offset + (20 if where == "header" else hlen + (sl.length - hlen) // 2)
    got = np.zeros(1, np.uint8)
    assert te.transfer_sync_read(endpoint, got, at, 1) == 0
    assert te.transfer_sync_write(endpoint, bytes([int(got[0]) ^ 0x81]), at, 1) == 0


def test_damaged_replicas_are_caught_over_tcp(cluster, monkeypatch):
    monkeypatch.setenv("MOONCAKE_SHM", "0")   # the reader goes over tcp, as across hosts
    m = cluster.master()
    for _ in range(2):
        cluster.node(m.addr, dram="32MB")
    wait_nodes(m.addr, 2)
    rng = np.random.default_rng(11)
    values = {f"{name}{i}": rng.integers(0, 256, n, dtype=np.uint8).tobytes()
              for name, n in SIZES.items() for i in range(3)}
    with store(m.addr) as s, TransferEngine(use_shm=False, timeout_ms=5000) as te:
        two = ReplicateConfig(replica_num=2)
        assert s.batch_put(list(values), list(values.values()), two) == [0] * len(values)
        node = s._index.get_replicas("small0").replicas[0][0].segment
        assert s._cluster.engine.transport(s._remote._where(node)[0]) == "tcp"
        # Key 0 of each size: one copy damaged (value), key 1: one copy (header),
        # key 2: both copies.
        for name in SIZES:
            _damage(s, te, f"{name}0", 0, "value")
            _damage(s, te, f"{name}1", 1, "header")
            _damage(s, te, f"{name}2", 0, "value")
            _damage(s, te, f"{name}2", 1, "header")
        kept = [k for k in values if not k.endswith("2")]
        for _ in range(3):   # lookups rotate the replica order: each copy comes first
            for k in kept:
                assert s.get(k) == values[k]
                buf = np.zeros(len(values[k]), np.uint8)
                assert s.get_into(k, buf) == len(values[k]) and buf.tobytes() == values[k]
            bufs = [np.zeros(len(values[k]), np.uint8) for k in kept]
            assert s.batch_get_into(kept, bufs) == [len(values[k]) for k in kept]
            assert all(b.tobytes() == values[k] for k, b in zip(kept, bufs))
        lost = [k for k in values if k.endswith("2")]
        with pytest.raises(ChecksumMismatch):
            s.get(lost[0])
        bufs = [np.zeros(len(values[k]), np.uint8) for k in lost[1:]]
        assert s.batch_get_into(lost[1:], bufs) == [int(ErrorCode.CHECKSUM_MISMATCH)] * 2
        assert s.batch_exists(lost) == [False] * 3   # a copy that fails everywhere is dropped
        assert s.batch_get(kept) == [values[k] for k in kept]
