"""Extra replicas of hot objects are the first thing eviction gives back."""
from __future__ import annotations

from mooncake_store.config import Config
from mooncake_store.master.cluster_index import ClusterIndex
from mooncake_store.master.index import ObjectIndex
from mooncake_store.master.service import MasterService

SEG = 1 << 20
BIG = 128 << 10     # the hot object: one extra replica frees more than eviction_ratio asks
SMALL = 16 << 10


def _index() -> tuple[ObjectIndex, ClusterIndex]:
    cfg = Config(global_segment_size=0, lease_ttl_ms=0, high_watermark=0.9, eviction_ratio=0.05,
                 eviction_policy="lru")
    ix = ObjectIndex(cfg)
    ix.add_segment("a:1", SEG)
    ix.add_segment("b:1", SEG)
    return ix, ClusterIndex(ix)


def _put(ix: ObjectIndex, key: str, size: int) -> None:
    assert ix.put_start(key, size) is not None
    ix.put_end(key)


def _make_hot(ix: ObjectIndex, cl: ClusterIndex, key: str) -> None:
    """What the service does for a hot object: one more replica on the other segment."""
    held = ix.get_replicas(key).replicas[0][0].segment
    sl = cl.add_replica_start(key, "b:1" if held == "a:1" else "a:1")
    assert sl is not None and cl.add_replica_end(key, sl, True)
    ix.mark_hot(key, 1)
    assert len(ix.get_replicas(key).replicas) == 2


def test_hot_extra_replica_goes_before_any_object():
    ix, cl = _index()
    _put(ix, "hot", BIG)          # the oldest key: LRU's first victim were it not for its extra
    _make_hot(ix, cl, "hot")
    keys = []
    while ix.used + SMALL < 0.9 * ix.capacity:
        keys.append(f"k{len(keys)}")
        _put(ix, keys[-1], SMALL)
    before = ix.used
    keys.append("over")
    _put(ix, "over", SMALL)        # crosses the high watermark: eviction runs
    assert ix.counters["evictions"] == 0
    assert ix.counters["hot_extras_dropped"] == 1
    assert all(ix.exists(k) for k in keys) and ix.exists("hot")
    assert len(ix.get_replicas("hot").replicas) == 1       # its base replica stays
    assert ix.used < before                                # the extra's room came back
    assert ix.take_cooled() == ["hot"] and ix.take_cooled() == []
    assert ix.hot == {}


def test_objects_are_evicted_only_after_every_hot_extra():
    ix, cl = _index()
    for k in ("hot0", "hot1"):
        _put(ix, k, SMALL)
        _make_hot(ix, cl, k)
    n = 0
    while ix.counters["evictions"] == 0 and n < 1000:   # keep writing until objects go
        _put(ix, f"k{n}", SMALL)
        n += 1
    assert ix.counters["evictions"] > 0
    assert ix.counters["hot_extras_dropped"] == 2          # both extras went first
    assert sorted(ix.take_cooled()) == ["hot0", "hot1"]
    for k in ("hot0", "hot1"):                             # at most the base replica is left
        assert not ix.exists(k) or len(ix.get_replicas(k).replicas) == 1


def test_leased_hot_extra_is_still_dropped_and_base_kept():
    ix, cl = _index()
    ix.lease_s = 60.0                                      # every read takes a long lease
    _put(ix, "hot", BIG)
    _make_hot(ix, cl, "hot")
    ix.get_replicas("hot")                                 # a reader holds a lease
    k = 0
    while ix.counters.get("hot_extras_dropped", 0) == 0 and k < 1000:
        _put(ix, f"k{k}", SMALL)
        k += 1
    assert ix.counters["hot_extras_dropped"] == 1
    assert len(ix.get_replicas("hot").replicas) == 1


def test_service_stops_wanting_the_extras_eviction_dropped():
    cfg = Config(global_segment_size=0, lease_ttl_ms=0, high_watermark=0.9, eviction_ratio=0.05,
                 eviction_policy="lru")
    svc = MasterService(cfg, hot_reads_per_s=1.0)
    try:
        ix = svc.index
        ix.add_segment("a:1", SEG)
        ix.add_segment("b:1", SEG)
        _put(ix, "hot", BIG)
        _make_hot(ix, svc.cluster, "hot")
        svc._hot["hot"], svc.want["hot"] = 1, 2            # as _count_read left it
        k = 0
        while not ix.cooled and k < 1000:
            _put(ix, f"k{k}", SMALL)
            k += 1
        svc._repair["hot"] = None
        svc._plan_repairs(svc.clock())
        assert "hot" not in svc.want and "hot" not in svc._hot
        assert not svc._tasks                              # no copy of the extra back
        assert len(ix.get_replicas("hot").replicas) == 1
    finally:
        svc.rpc.close()


def test_service_forgets_the_replica_count_of_objects_that_left():
    """`want` (replica_num > 1 per key) must not outlive its objects: removed, evicted or
    abandoned keys leave it, or a long run of replicated puts grows it without bound."""
    from mooncake_store import ReplicateConfig
    from mooncake_store.master.wire import rc_to_wire

    cfg = Config(global_segment_size=0, lease_ttl_ms=0, eviction_policy="lru")
    svc = MasterService(cfg)
    try:
        svc.index.add_segment("a:1", 1 << 20)
        svc.index.add_segment("b:1", 1 << 20)
        rc = rc_to_wire(ReplicateConfig(replica_num=2))
        for i in range(200):                      # 200 x 2 x 16 KiB in 2 MiB: most are evicted
            assert svc.rpc_put_start(f"k{i}", 16_000, rc) is not None
            svc.rpc_put_end(f"k{i}")
        assert svc.index.counters["evictions"] > 100
        svc.rpc_remove("k199")
        svc.rpc_put_start("never-ended", 16_000, rc)
        svc.rpc_put_revoke("never-ended")
        alive = set(svc.index.keys())
        assert set(svc.want) == alive and all(svc.want[k] == 2 for k in alive)
    finally:
        svc.rpc.close()
