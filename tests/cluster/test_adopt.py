"""A master adopting a node's inventory (a rebuild after failover, or a node joining with
data): every intact, non-overlapping record becomes a replica, in one pass over the free
space however fragmented the segment is."""
from __future__ import annotations

from mooncake_store import Config
from mooncake_store.master.cluster_index import ClusterIndex
from mooncake_store.master.index import ObjectIndex
from mooncake_store.master.tombstones import Tombstones

REC = 4160   # a 4 KiB value with a one-line header


def _index(size: int) -> tuple[ObjectIndex, ClusterIndex, Tombstones]:
    ix = ObjectIndex(Config())
    ts = Tombstones(lambda: 0.0)
    ts.attach(ix)
    ix.add_segment("s", size)
    return ix, ClusterIndex(ix), ts


def test_a_fragmented_inventory_is_adopted_whole():
    n = 30_000    # with a gap after every record; one reserve per record made this ~14 s
    ix, ci, _ = _index(2 * n * REC)
    inv = [[f"k{i}", 2 * i * REC, REC, 4096, 0] for i in range(n)]
    assert ci.adopt("s", inv[::-1]) == n            # order does not matter
    assert ix.segments["s"].allocator.used == n * REC
    assert ci.replicas("k123")[0][0].offset == 2 * 123 * REC
    # The gaps are free again and nothing new lands on an adopted record.
    off = ix.segments["s"].allocator.alloc(REC)
    assert off is not None and (off // REC) % 2 == 1


def test_overlapping_and_repeated_entries_take_one_replica_each():
    ix, ci, _ = _index(1 << 20)
    inv = [["a", 0, REC, 4096, 0],
           ["b", REC - 64, REC, 4096, 0],      # overlaps a: refused
           ["a", 2 * REC, REC, 4096, 0],       # a again in this segment: refused, space kept free
           ["c", 4 * REC, REC, 4000, 0]]
    assert ci.adopt("s", inv) == 2
    assert [r[0].offset for r in ci.replicas("a")] == [0] and ci.replicas("b") is None
    assert ix.segments["s"].allocator.used == 2 * REC


def test_a_returning_segment_frees_and_zaps_records_of_keys_known_now():
    ix, ci, ts = _index(1 << 20)
    ix.put_start("known", 4096)
    ix.put_end("known")
    inv = [["known", 64 * REC, REC, 4096, 0], ["new", 66 * REC, REC, 4096, 0]]
    assert ci.adopt("s", inv, returning=True) == 1
    assert ci.replicas("new")[0][0].offset == 66 * REC
    assert ix.counters["stale_refused"] == 1
    zaps = ts.take(["s"])
    assert [z[2:] for z in zaps] == [[64 * REC, REC]]


def test_a_large_inventory_comes_in_parts_and_recovery_waits_for_the_last():
    import pytest

    from mooncake_store.errors import InvalidParams, StoreError
    from mooncake_store.master.service import MasterService

    svc = MasterService(Config(lease_ttl_ms=0))
    try:
        svc.become_leader({"n1"})
        seg = {"name": "n1:1", "base": 0, "size": 1 << 20}
        entries = [[f"k{i}", i * REC, REC, 4096, 0] for i in range(5)]
        svc.rpc_register_node("n1", "127.0.0.1:1", [seg], {"n1:1": len(entries)})
        svc._check_recovered(svc.clock())
        assert svc.role == "recovering"                   # registered, records still coming
        handlers = svc._handlers()
        st = handlers["stats"]()                          # answered while recovering
        assert st["role"] == "recovering" and st["nodes_adopting"] == 1
        assert st["nodes"]["n1"]["adopting"] == ["n1:1"]
        with pytest.raises(StoreError, match="not ready"):
            handlers["exists"]("k0")                      # clients wait
        assert svc.rpc_adopt_inventory("n1", "n1:1", entries[:3], False) == 3
        assert svc.rpc_adopt_inventory("n1", "n1:1", entries[:3], False) == 0   # a retried part
        svc._check_recovered(svc.clock())
        assert svc.role == "recovering"
        assert svc.rpc_adopt_inventory("n1", "n1:1", entries[3:], True) == 2
        svc._check_recovered(svc.clock())
        assert svc.role == "leader" and sorted(svc.index.keys()) == [f"k{i}" for i in range(5)]
        assert svc.rpc_stats()["nodes_adopting"] == 0
        with pytest.raises(InvalidParams, match="register first"):
            svc.rpc_adopt_inventory("n2", "n1:1", entries, True)
        with pytest.raises(InvalidParams, match="not a cold tier"):   # n1 has no cold tiers
            svc.rpc_adopt_inventory("n1", "ssd", [["k9", 10, 0]], True, True)
    finally:
        svc.rpc.close()


def test_a_node_registered_after_the_last_etcd_read_is_not_dropped():
    """The membership read is up to 0.2 s old: a node that took its lease and registered
    since is missing from it, and used to be dropped at once (puts then saw no room)."""
    import time

    from mooncake_store.master.service import MasterService

    class Membership:
        seen = (0.0, set())

        def alive_nodes(self):
            return self.seen

    svc = MasterService(Config(lease_ttl_ms=0))
    try:
        svc.membership = Membership()
        before = time.monotonic()
        svc.rpc_register_node("n1", "127.0.0.1:1", [{"name": "n1:1", "base": 0, "size": 1 << 20}])
        svc.membership.seen = (before, set())          # read before n1 registered
        svc._check_membership()
        assert "n1" in svc.nodes
        svc.membership.seen = (time.monotonic(), set())  # read after: n1's lease is gone
        svc._check_membership()
        assert "n1" not in svc.nodes
    finally:
        svc.rpc.close()


def test_a_node_sending_its_inventory_is_not_taken_for_dead():
    """A node cannot heartbeat while it sends its parts (a large one takes longer than
    node_ttl): each part counts as a sign of life, or the node is dropped mid-way, again
    and again."""
    from mooncake_store.master.service import MasterService

    now = [0.0]
    svc = MasterService(Config(lease_ttl_ms=0, node_ttl_ms=5000), clock=lambda: now[0])
    try:
        entries = [[f"k{i}", i * REC, REC, 4096, 0] for i in range(3)]
        svc.rpc_register_node("n1", "127.0.0.1:1", [{"name": "n1:1", "base": 0, "size": 1 << 20}],
                              {"n1:1": 3})
        for i, part in enumerate(entries):
            now[0] = 4.0 * (i + 1)                     # 4 s between parts, 12 s in all
            svc._expire_nodes(now[0])
            assert "n1" in svc.nodes
            svc.rpc_adopt_inventory("n1", "n1:1", [part], i == 2)
        assert len(svc.index.keys()) == 3
    finally:
        svc.rpc.close()
