"""etcd: leader election, failover without loss, membership leases (real etcd on 127.0.0.1)."""
from __future__ import annotations

import time

import numpy as np
import pytest

from mooncake_store import ReplicateConfig, Store
from mooncake_store.meta.etcd import EtcdClient, leader_key

from support.cluster import master_role
from support.procs import wait_until

TTL = ["--node-ttl-ms", "2000"]


def _etcd_store(etcd, **kw) -> Store:
    return Store(master="etcd", metadata_server=etcd.endpoint, global_segment_size=0,
                 rpc_timeout_ms=2000, **kw)


def test_etcd_client_basics(etcd):
    c = EtcdClient(etcd.endpoint)
    assert c.healthy()
    c.put("/t/a", "1")
    c.put("/t/b", "2")
    assert c.get("/t/a") == "1" and c.get("/t/zz") is None
    assert c.get_prefix("/t/") == {"/t/a": "1", "/t/b": "2"}
    lease = c.lease_grant(5)
    assert c.create("/t/lock", "me", lease) is True
    assert c.create("/t/lock", "you") is False
    assert c.lease_keepalive(lease) > 0
    c.lease_revoke(lease)
    assert c.get("/t/lock") is None          # went with its lease
    c.delete("/t/a")
    assert c.get("/t/a") is None


def test_leader_failover_keeps_every_object(cluster, etcd):
    masters = [cluster.master("--etcd", etcd.endpoint, *TTL) for _ in range(2)]
    leader = wait_until(lambda: next((m for m in masters if master_role(m.addr) == "leader"), None),
                        what="a leader elected")
    standby = next(m for m in masters if m is not leader)
    assert master_role(standby.addr) == "standby"
    assert EtcdClient(etcd.endpoint).get(leader_key("default")) == leader.addr
    for _ in range(2):
        cluster.node("etcd", "--etcd", etcd.endpoint, *TTL)
    values = {f"ha/{i}": np.random.default_rng(i).bytes(30_000 + i) for i in range(40)}
    s = _etcd_store(etcd)
    try:
        wait_until(lambda: len(s.stats()["nodes"]) == 2, what="nodes registered with the leader")
        for i, (k, v) in enumerate(values.items()):
            s.put(k, v, ReplicateConfig(replica_num=2 if i % 4 == 0 else 1))
        leader.kill()                                     # kill -9 the leader
        t0 = time.monotonic()
        wait_until(lambda: master_role(standby.addr) in ("leader", "recovering"), timeout=15,
                   what="standby takes over")
        takeover_s = time.monotonic() - t0
        # The same client follows the new leader by itself; nothing reads as missing.
        for k, v in values.items():
            assert s.get(k) == v
        assert sorted(s.keys()) == sorted(values)
        print(f"takeover in {takeover_s:.2f} s")
        assert takeover_s < 10.0, f"takeover took {takeover_s:.1f} s"
        s.put("ha/after", b"written through the new leader")
        assert s.get("ha/after") == b"written through the new leader"
    finally:
        s.close()


def test_node_lease_expiry_drops_the_node(cluster, etcd):
    m = cluster.master("--etcd", etcd.endpoint, "--node-ttl-ms", "60000")   # heartbeats alone: slow
    wait_until(lambda: master_role(m.addr) == "leader", what="leader")
    nodes = [cluster.node("etcd", "--etcd", etcd.endpoint, *TTL) for _ in range(2)]
    s = _etcd_store(etcd)
    try:
        wait_until(lambda: len(s.stats()["nodes"]) == 2, what="nodes registered")
        s.put("x", b"y" * 1000, ReplicateConfig(replica_num=2))
        nodes[0].kill()
        # The node's etcd lease (2 s) expires long before the master's 60 s heartbeat timeout.
        wait_until(lambda: len(s.stats()["nodes"]) == 1, timeout=15, what="lease expiry noticed")
        assert s.get("x") == b"y" * 1000
        segs = EtcdClient(etcd.endpoint).get_prefix("/mooncake_store/default/segments/")
        assert len(segs) == 1 and nodes[1].endpoint in next(iter(segs))
    finally:
        s.close()


def test_removed_objects_stay_removed_after_failover(cluster, etcd):
    """Removed, replaced and evicted records are invalidated on the nodes, so the new
    leader's rebuild from the nodes' inventories does not bring them back."""
    from mooncake_store.errors import ObjectNotFound

    masters = [cluster.master("--etcd", etcd.endpoint, *TTL) for _ in range(2)]
    leader = wait_until(lambda: next((m for m in masters if master_role(m.addr) == "leader"), None),
                        what="a leader elected")
    standby = next(m for m in masters if m is not leader)
    for _ in range(2):
        cluster.node("etcd", "--etcd", etcd.endpoint, *TTL)
    values = {f"rm/{i}": np.random.default_rng(100 + i).bytes(20_000 + i) for i in range(30)}
    s = _etcd_store(etcd)
    try:
        wait_until(lambda: len(s.stats()["nodes"]) == 2, what="nodes registered with the leader")
        # 2 x 32 MB of nodes: 80 MiB of 1 MiB values makes the master evict the oldest.
        for i in range(80):
            s.put(f"ev/{i}", np.random.default_rng(1000 + i).bytes(1 << 20))
        for i, (k, v) in enumerate(values.items()):
            s.put(k, v, ReplicateConfig(replica_num=2 if i % 3 == 0 else 1))
        removed = [k for i, k in enumerate(values) if i % 2 == 1]
        for k in removed:
            s.remove(k)
        s.upsert("rm/0", b"the new value of rm/0")     # the old record is freed too
        values["rm/0"] = b"the new value of rm/0"
        kept = {k: v for k, v in values.items() if k not in removed}

        def settled():
            st = s.stats()
            return st["zaps_queued"] > 0 and \
                st["zaps_done"] + st["zaps_skipped"] + st["zaps_dropped"] == st["zaps_queued"]
        wait_until(settled, what="freed records invalidated on the nodes")
        st = s.stats()
        assert st["zaps_done"] >= len(removed) and st["evictions"] > 0
        before = set(s.keys())
        evicted = {f"ev/{i}" for i in range(80)} - before
        assert evicted and kept.keys() <= before
        leader.kill()                                     # kill -9 the leader
        wait_until(lambda: master_role(standby.addr) == "leader", timeout=15, what="standby leads")
        for k in removed + sorted(evicted):
            assert not s.exists(k)
            with pytest.raises(ObjectNotFound):
                s.get(k)
        for k, v in kept.items():
            assert s.get(k) == v
        assert set(s.keys()) == before
    finally:
        s.close()


def test_client_does_not_wait_on_etcd(cluster):
    """While the known master answers, etcd is not asked at all; when the master is gone
    and etcd cannot name another, a call ends with -900/-901 after its own timeout instead
    of waiting out the failover window."""
    from mooncake_store.client.cluster import FAILOVER_WINDOW_MS, MasterClient
    from mooncake_store.errors import ErrorCode, StoreError

    m = cluster.master()
    asked = []

    def etcd_down():
        asked.append(1)
        raise StoreError("etcd: no endpoint answered", ErrorCode.ETCD_OPERATION_ERROR)

    mc = MasterClient([m.addr], timeout_ms=1000, resolve=etcd_down)
    try:
        for _ in range(20):
            assert mc.call("ping")["role"] == "leader"
        assert len(asked) <= 1            # only the first call, before the master had answered
        m.kill()
        t0 = time.monotonic()
        with pytest.raises(StoreError) as e:
            mc.call("ping")
        took = time.monotonic() - t0
        assert e.value.code in (ErrorCode.RPC_FAIL, ErrorCode.RPC_TIMEOUT)
        assert took < FAILOVER_WINDOW_MS / 1000 / 2, took
    finally:
        mc.close()


def test_failover_with_a_node_whose_inventory_comes_in_parts(cluster, etcd):
    """100,000 records: the node sends its inventory in several adopt_inventory parts, and the
    new leader answers clients only once the last part is in, so no read misses meanwhile."""
    masters = [cluster.master("--etcd", etcd.endpoint, *TTL) for _ in range(2)]
    leader = wait_until(lambda: next((m for m in masters if master_role(m.addr) == "leader"), None),
                        what="a leader elected")
    standby = next(m for m in masters if m is not leader)
    cluster.node("etcd", "--etcd", etcd.endpoint, *TTL, dram="64MB")
    n = 100_000
    keys = [f"many/{i}" for i in range(n)]
    s = _etcd_store(etcd)
    try:
        wait_until(lambda: len(s.stats()["nodes"]) == 1, what="node registered with the leader")
        for lo in range(0, n, 4096):
            chunk = keys[lo:lo + 4096]
            values = [i.to_bytes(4, "little") * 64 for i in range(lo, lo + len(chunk))]
            assert s.batch_put(chunk, values) == [0] * len(chunk)
        leader.kill()
        wait_until(lambda: master_role(standby.addr) == "leader", timeout=30, what="standby leads")
        assert s.stats()["objects"] == n          # every part adopted before clients were let in
        sample = list(range(0, n, 997))
        got = s.batch_get([keys[i] for i in sample])
        assert got == [i.to_bytes(4, "little") * 64 for i in sample]
    finally:
        s.close()
