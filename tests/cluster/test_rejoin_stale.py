"""A node the master dropped while it was alive (frozen past node_ttl) comes back with the
records it held. Keys written again meanwhile must never be served from its old copies;
keys nobody wrote meanwhile come back with it."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from mooncake_store import ReplicateConfig
from mooncake_store.errors import ObjectNotFound

from support.cluster import store, wait_nodes
from support.procs import wait_until

SIZE = 64 << 10


def _value(seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, SIZE, dtype=np.uint8).tobytes()


def _segments(s, key: str) -> set[str]:
    return {r[0]["segment"] for r in s._index.stat(key)["replicas"]}


def test_returning_node_does_not_bring_back_overwritten_values(cluster):
    m = cluster.master(node_ttl_ms=1000)
    a = cluster.node(m.addr, dram="16MB")
    b = cluster.node(m.addr, dram="16MB")
    wait_nodes(m.addr, 2)
    one = ReplicateConfig(replica_num=1)
    with store(m.addr) as s:
        old = {f"k/{i}": _value(i) for i in range(40)}
        for k, v in old.items():
            s.put(k, v, one)
        on_b = [k for k in old if b.endpoint in _segments(s, k)]
        assert len(on_b) >= 4, "placement should use both nodes"
        rewritten, untouched = on_b[::2], on_b[1::2]

        os.kill(b.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: len(s.stats()["nodes"]) == 1, what="frozen node dropped")
            for k in on_b:
                with pytest.raises(ObjectNotFound):
                    s.get(k)
            new = {k: _value(1000 + i) for i, k in enumerate(rewritten)}
            for k, v in new.items():
                s.put(k, v, one)     # the only live node takes them
        finally:
            os.kill(b.pid, signal.SIGCONT)
        wait_until(lambda: len(s.stats()["nodes"]) == 2, what="node back")

        for k, v in new.items():
            assert _segments(s, k) == {a.endpoint}, k   # its stale copy was not attached
            for _ in range(4):
                assert s.get(k) == v
        for k in untouched:          # nobody wrote these while it was away: they come back
            assert s.get(k) == old[k]
        assert s.batch_get(list(new)) == list(new.values())
