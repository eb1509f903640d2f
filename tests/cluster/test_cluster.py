"""Cluster mode with real processes on 127.0.0.1: master, nodes and clients."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import time

import numpy as np
import pytest

from mooncake_store import ReplicateConfig
from mooncake_store.errors import ErrorCode, ObjectNotFound, RpcFailed, RpcTimeout, StoreError

from support.cluster import after_master_restart, read_elsewhere, store, wait_nodes
from support.net import free_port
from support.procs import wait_until


def _value(i: int, n: int) -> bytes:
    return np.random.default_rng(i).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_put_on_one_client_get_from_another(cluster):
    m = cluster.master()
    cluster.node(m.addr)
    cluster.node(m.addr)
    wait_nodes(m.addr, 2)
    values = {f"obj/{i}": _value(i, n) for i, n in enumerate([1, 4096, 1 << 20, 5_000_001])}
    with store(m.addr) as a:
        for k, v in values.items():
            a.put(k, v)
        a.put("obj/0", b"second put of an existing key is a no-op")
    got = read_elsewhere(m.addr, values)
    assert got == {k: hashlib.sha256(v).hexdigest() for k, v in values.items()}


def test_client_with_a_segment_serves_other_clients(cluster):
    m = cluster.master()
    cluster.node(m.addr, dram="64MB")     # more free space: the default placement's choice
    wait_nodes(m.addr, 1)
    with store(m.addr, global_segment_size=8 << 20) as owner, store(m.addr) as reader:
        owner.put("from-owner", b"x" * 100_000, ReplicateConfig(preferred_segment=owner.hostname))
        assert reader.get("from-owner") == b"x" * 100_000
        st = reader._index.stat("from-owner")
        assert st["replicas"][0][0]["segment"] == owner.hostname
        owner.put("same-node", b"y" * 1000, ReplicateConfig(prefer_alloc_in_same_node=True))
        assert reader._index.stat("same-node")["replicas"][0][0]["segment"] == owner.hostname
        owner.put("anywhere", b"z" * 1000)
        assert reader._index.stat("anywhere")["replicas"][0][0]["segment"] != owner.hostname
        assert reader.get("same-node") == b"y" * 1000 and owner.get("anywhere") == b"z" * 1000


def test_batch_apis_across_three_nodes(cluster):
    m = cluster.master()
    for _ in range(3):
        cluster.node(m.addr, dram="16MB")
    wait_nodes(m.addr, 3)
    keys = [f"b/{i:03d}" for i in range(48)]
    # Over 64 KiB, so not one block on one node: per-key placement over every node.
    values = [_value(i, 100 << 10) for i in range(48)]
    with store(m.addr) as s:
        assert s.batch_put(keys, values) == [0] * 48
        assert s.batch_put([keys[0], "b/empty"], [b"not stored", b""]) == [0, -600]
        arr = np.frombuffer(values[0], dtype=np.uint8).copy()
        assert s.batch_put_from(["b/zc"], [arr]) == [0]
        assert s.get("b/zc") == values[0] and s.get(keys[0]) == values[0]
        s.remove("b/zc", force=True)
        assert s.batch_get(keys + ["b/missing"]) == values + [None]
        assert s.batch_exists(keys[:3] + ["nope"]) == [True, True, True, False]
        assert s.longest_prefix(keys[:5] + ["nope"] + keys[5:7]) == 5
        bufs = [bytearray(100 << 10) for _ in range(4)]
        assert s.batch_get_into(keys[:3] + ["b/missing"], bufs) == [100 << 10] * 3 + [-704]
        assert [bytes(b) for b in bufs[:3]] == values[:3]
        used = [seg["used"] for seg in s.stats()["segments"].values()]
        assert len(used) == 3 and all(u > 0 for u in used)   # spread over every node
        assert sorted(s.keys("^b/00")) == keys[:10]
        assert s.remove_by_regex("^b/01", force=True) == 10
        assert s.batch_remove(["b/000", "b/nope"], force=True) == [0, -704]
        # One RPC for the whole list, leases respected per key without force.
        calls = []
        call = s._index.m.call
        s._index.m.call = lambda method, *a, **k: calls.append(method) or call(method, *a, **k)
        assert s.batch_put(["b/fresh"], [b"never read: no lease"]) == [0]
        s.get("b/001")                                     # a fresh read lease
        assert s.batch_remove(["b/001", "b/fresh", "b/000"]) == [-706, 0, -704]
        s._index.m.call = call
        assert calls[-2:] == ["get_replicas", "remove_each"]
        assert s.exists("b/001") and not s.exists("b/fresh")
        assert len(s.keys()) == 48 - 11
        assert s.remove_all(force=True) == 37
        # Many keys go in parts, one call each, so other clients are served in between.
        many = [f"m/{i}" for i in range(9000)]
        assert s.batch_put(many, [b"v"] * len(many)) == [0] * len(many)
        calls.clear()
        s._index.m.call = lambda method, *a, **k: calls.append(method) or call(method, *a, **k)
        assert s.remove_by_regex("^m/", force=True) == 9000
        s._index.m.call = call
        assert calls == ["keys", "remove_many", "remove_many", "remove_many"]
        assert not s.keys("^m/")
        # Space of leased objects is reused only after their leases end.
        wait_until(lambda: s.stats()["used"] == 0, what="space freed after leases end")


def _three_nodes_holding_twice(cluster, values: dict, port: int = 0):
    """A master (on `port`) and three nodes, every value put with replica_num=2: (master,
    nodes)."""
    m = cluster.master(port=port, node_ttl_ms=1000)
    nodes = [cluster.node(m.addr, dram="16MB") for _ in range(3)]
    wait_nodes(m.addr, 3)
    with store(m.addr) as s:
        for k, v in values.items():
            s.put(k, v, ReplicateConfig(replica_num=2))
    return m, nodes


def test_replicas_survive_node_kill_and_are_restored(cluster):
    values = {f"r/{i}": _value(100 + i, 200_000) for i in range(20)}
    m, nodes = _three_nodes_holding_twice(cluster, values)
    with store(m.addr) as s:
        for k in values:
            segs = {r[0]["segment"] for r in s._index.stat(k)["replicas"]}
            assert len(segs) == 2       # two replicas, on distinct nodes
        victim = nodes[0]
        victim.kill()                   # kill -9: no goodbye
        for k, v in values.items():     # readable at once, from the surviving replica
            assert s.get(k) == v
        assert s.batch_get(list(values)) == list(values.values())   # batch path falls back too
        wait_until(lambda: len(s.stats()["nodes"]) == 2, what="dead node dropped")
        wait_until(lambda: _two_replicas_off(s, values, victim), timeout=30,
                   what="replica count restored")
        for k, v in values.items():
            assert s.get(k) == v
        assert s.stats()["repairs_done"] >= 1


def _two_replicas_off(s, keys, victim) -> bool:
    """Every key has two replicas again, none on the dead node."""
    stats = [s._index.stat(k) for k in keys]
    return all(len(st["replicas"]) == 2 and victim.endpoint not in
               {r[0]["segment"] for r in st["replicas"]} for st in stats)


def test_replica_count_is_restored_after_a_master_restart_too(cluster):
    """A rebuilt index learns replica_num from where it finds each object: one found on two
    nodes is repaired back to two when one of them dies later."""
    port = free_port()
    twice = {f"r2/{i}": _value(300 + i, 100_000) for i in range(12)}
    m, nodes = _three_nodes_holding_twice(cluster, twice, port)
    with after_master_restart(cluster, m, port, twice, nodes=3) as s:
        victim = nodes[0]
        assert any(victim.endpoint in {r[0]["segment"] for r in s._index.stat(k)["replicas"]}
                   for k in twice)
        victim.kill()
        wait_until(lambda: _two_replicas_off(s, twice, victim), timeout=30,
                   what="replica count restored by the new master")
        for k, v in twice.items():
            assert s.get(k) == v


ABANDON = """
import sys, os
from mooncake_store.rpc import RpcClient
c = RpcClient(sys.argv[1], timeout_ms=5000)
print(c.call("put_start", "abandoned", 1 << 20, None, False), flush=True)
os._exit(0)   # dies between put_start and put_end
"""


def test_put_start_without_put_end_is_reclaimed(cluster):
    m = cluster.master(put_timeout_ms=800)
    cluster.node(m.addr)
    wait_nodes(m.addr, 1)
    out = subprocess.run([sys.executable, "-c", ABANDON, m.addr], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    with store(m.addr) as s:
        st = s.stats()
        assert st["pending"] == 1 and st["used"] > 1 << 20
        with pytest.raises(StoreError) as e:
            s.get("abandoned")
        assert e.value.code == ErrorCode.REPLICA_IS_NOT_READY
        wait_until(lambda: s.stats()["pending"] == 0, what="abandoned put reclaimed")
        st = s.stats()
        assert st["used"] == 0 and st["reclaimed_puts"] == 1
        s.put("abandoned", b"now it works")
        assert s.get("abandoned") == b"now it works"


def test_node_restart_rejoins(cluster):
    m = cluster.master(node_ttl_ms=1000)
    port = free_port()
    n = cluster.node(m.addr, port=port)
    wait_nodes(m.addr, 1)
    with store(m.addr) as s:
        s.put("before", b"lost with the only node")
        n.kill()
        wait_until(lambda: len(s.stats()["nodes"]) == 0, what="node dropped")
        with pytest.raises(ObjectNotFound):
            s.get("before")
        n2 = cluster.node(m.addr, port=port)
        assert n2.endpoint == n.endpoint
        wait_until(lambda: len(s.stats()["nodes"]) == 1, what="node rejoined")
        s.put("after", b"stored on the restarted node")
        assert s.get("after") == b"stored on the restarted node"


def test_master_restart_rebuilds_index_from_node_inventories(cluster):
    port = free_port()
    m = cluster.master(port=port)
    cluster.node(m.addr)
    cluster.node(m.addr)
    wait_nodes(m.addr, 2)
    values = {f"inv/{i}": _value(200 + i, 50_000 + i) for i in range(30)}
    with store(m.addr) as s:
        for k, v in values.items():
            s.put(k, v, ReplicateConfig(replica_num=2 if k.endswith("7") else 1))
    with after_master_restart(cluster, m, port, values, nodes=2) as s:
        assert len(s._index.stat("inv/7")["replicas"]) == 2


def test_dead_master_fails_fast_with_rpc_codes(cluster):
    m = cluster.master()
    cluster.node(m.addr)
    wait_nodes(m.addr, 1)
    s = store(m.addr, rpc_timeout_ms=500)
    s.put("k", b"v")
    m.kill()
    t0 = time.monotonic()
    with pytest.raises((RpcFailed, RpcTimeout)) as e:
        s.get("k")
    assert e.value.code in (-900, -901)
    assert time.monotonic() - t0 < 5.0       # bounded by the timeout, never a hang
    s.close()
    t0 = time.monotonic()
    with pytest.raises(RpcFailed):
        store(m.addr, rpc_timeout_ms=500)     # nobody listens: refused at construction
    assert time.monotonic() - t0 < 5.0


def test_compat_api_against_a_cluster(cluster):
    from mooncake_store import MooncakeDistributedStore

    m = cluster.master()
    cluster.node(m.addr)
    wait_nodes(m.addr, 1)
    a, b = MooncakeDistributedStore(), MooncakeDistributedStore()
    assert a.setup("127.0.0.1", "P2PHANDSHAKE", 8 << 20, 16 << 20, "tcp", "", m.addr) == 0
    assert b.setup("127.0.0.1", "P2PHANDSHAKE", 0, 16 << 20, "tcp", "", m.addr) == 0
    try:
        assert a.put("c/1", b"hello") == 0
        assert a.put_batch(["c/2", "c/3"], [b"two", b"three"]) == 0
        assert b.get("c/1") == b"hello" and b.get("missing") == b""
        assert b.get_batch(["c/2", "c/3"]) == [b"two", b"three"]
        assert b.is_exist("c/1") == 1 and b.is_exist("nope") == 0
        assert b.batch_is_exist(["c/1", "nope"]) == [1, 0]
        assert b.get_size("c/3") == 5 and b.get_size("nope") == -704
        buf = np.zeros(16, dtype=np.uint8)
        assert b.register_buffer(buf.ctypes.data, 16) == 0
        assert b.get_into("c/2", buf.ctypes.data, 16) == 3 and bytes(buf[:3]) == b"two"
        assert b.remove("c/1") == -706            # leased by the get above
        assert b.remove("c/1", True) == 0 and b.get("c/1") == b""
        assert b.put("", b"x") == -600
        assert a.health_check() == 0
        m.kill()
        assert b.health_check() == 2   # master unreachable
    finally:
        a.close()
        b.close()


def test_striped_64mib_value_across_nodes(cluster):
    port = free_port()
    m = cluster.master(port=port)
    for _ in range(3):
        cluster.node(m.addr, dram="64MB")
    wait_nodes(m.addr, 3)
    big = np.random.default_rng(7).bytes(64 << 20)
    with store(m.addr) as s:
        s.put("striped", big, ReplicateConfig(replica_num=2))
        st = s._index.stat("striped")
        assert len(st["replicas"]) == 2
        for rep in st["replicas"]:
            assert len(rep) == 16                                  # 4 MiB stripes
            assert len({sl["segment"] for sl in rep}) == 3         # spread over every node
        assert s.get("striped") == big
        out = np.empty(64 << 20, dtype=np.uint8)
        assert s.get_into("striped", out) == 64 << 20 and out.tobytes() == big
        s.put("small", b"not striped")
    # A new master finds the stripes in the nodes' inventories and reassembles the object.
    m.kill()
    m2 = cluster.master(port=port)
    with store(m2.addr) as s:
        wait_until(lambda: len(s.stats()["nodes"]) == 3, what="nodes re-registered")
        assert sorted(s.keys()) == ["small", "striped"]
        assert s.get("striped") == big


def test_hot_object_gets_extra_replicas_then_cools_down(cluster):
    m = cluster.master("--hot-reads-per-s", "20", "--hot-max-replicas", "3")
    for _ in range(3):
        cluster.node(m.addr)
    wait_nodes(m.addr, 3)
    value = np.random.default_rng(3).bytes(100_000)
    with store(m.addr) as s:
        s.put("hot", value)
        s.put("cold", b"read once")
        nreps = lambda k: len(s._index.stat(k)["replicas"])  # noqa: E731
        for _ in range(400):                      # well above 20 reads/s
            assert s.get("hot") == value
            if nreps("hot") == 3:
                break
        wait_until(lambda: nreps("hot") == 3, what="hot object replicated")
        segs = {r[0]["segment"] for r in s._index.stat("hot")["replicas"]}
        assert len(segs) == 3
        orders = {s._index.get_replicas("hot").replicas[0][0].segment for _ in range(6)}
        assert len(orders) > 1                     # reads spread over the replicas
        assert s.get("hot") == value and nreps("cold") == 1
        wait_until(lambda: nreps("hot") == 1, timeout=30, what="extra replicas dropped when cold")
        assert s.get("hot") == value
        assert s.stats()["hot_promotions"] >= 1
