"""Striped objects regain their replica count after a node dies (master/stripe_repair.py),
and a restarted master reassembles the regrouped replicas from the nodes' inventories."""
from __future__ import annotations

import numpy as np

from mooncake_store import ReplicateConfig

from support.cluster import after_master_restart, store, wait_nodes
from support.net import free_port
from support.procs import wait_until

MIB = 1 << 20


def _layout_ok(s, key: str, alive: set[str]) -> bool:
    st = s._index.stat(key)
    reps = st["replicas"]
    if len(reps) != 2 or any(sl["endpoint"] not in alive for r in reps for sl in r):
        return False
    # The two copies of each part sit on different nodes.
    return all(a["segment"] != b["segment"] for a, b in zip(reps[0], reps[1]))


def test_striped_objects_regain_replicas_after_node_kill9(cluster):
    port = free_port()
    m = cluster.master(port=port)
    nodes = [cluster.node(m.addr, dram="64MB") for _ in range(3)]
    wait_nodes(m.addr, 3)
    values = {"s12": np.random.default_rng(1).bytes(12 * MIB),      # 3 parts
              "s18": np.random.default_rng(2).bytes(18 * MIB + 7),  # 5 parts
              "plain": np.random.default_rng(3).bytes(100_000)}
    with store(m.addr) as s:
        for k, v in values.items():
            s.put(k, v, ReplicateConfig(replica_num=2))
        assert len(s._index.stat("s18")["replicas"][0]) == 5
        nodes[1].kill()                                   # kill -9: every striped replica loses parts
        alive = {n.endpoint for n in nodes if n.alive}
        for k in values:
            wait_until(lambda: _layout_ok(s, k, alive) if k != "plain"
                       else len(s._index.stat(k)["replicas"]) == 2,
                       timeout=30, what=f"{k} back at 2 replicas on the surviving nodes")
        for k, v in values.items():
            assert s.get(k) == v
        st = s.stats()
        assert st["repairs_done"] >= 3 and st.get("lost", 0) == 0
    # A new master rebuilds from the inventories: replicas regrouped from parts written as
    # different replica numbers are reassembled whole.
    with after_master_restart(cluster, m, port, values, nodes=2) as s:
        for k in values:
            assert len(s._index.stat(k)["replicas"]) == 2, k
