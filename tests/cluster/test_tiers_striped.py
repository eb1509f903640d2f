"""Striped objects (values above the stripe size, split over nodes) under DRAM pressure: a
tiered node gathers the parts and stores the value as one cold record, so they are demoted
instead of dropped, read back byte-exact through get and get_into, promoted back on hit,
and written through with persist=True. Real master and node processes on 127.0.0.1."""
from __future__ import annotations

import numpy as np

from mooncake_store import ReplicateConfig

from support.cluster import store, wait_nodes
from support.procs import wait_until

MIB = 1 << 20
N = 12          # 12 x 3 MiB striped values into two 8 MB DRAM segments


def _cluster(cluster, tmp_path, promotion: str, dram: str = "8MB"):
    m = cluster.master("--promotion", promotion, "--stripe-size", "1MB")
    for i in range(2):
        cluster.node(m.addr, "--ssd", f"{tmp_path}/ssd{i}:64MB", dram=dram)
    wait_nodes(m.addr, 2)
    return m


def _fill(s, n: int = N) -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    vals = {}
    for i in range(n):
        v = rng.bytes(3 * MIB + i)      # 4 parts of ~0.75 MiB: striped over both nodes
        s.put(f"s{i}", v)
        vals[f"s{i}"] = v
    return vals


def test_striped_objects_are_demoted_not_dropped(cluster, tmp_path):
    m = _cluster(cluster, tmp_path, "off")
    with store(m.addr) as s:
        vals = _fill(s)            # more than DRAM holds: puts wait for demotions, never fail
        st = s.stats()
        assert st["evictions"] == 0 and st.get("lost", 0) == 0
        assert st["cold"]["striped_demotions"] > 0
        tiers = {k: s._index.stat(k) for k in vals}
        cold = [k for k, t in tiers.items() if t["tier"] == "ssd"]
        assert cold and len(cold) < N
        for k in cold:            # one whole record on one node; the DRAM parts are freed
            assert tiers[k]["replicas"] == [] and len(tiers[k]["cold"]) == 1
        warm = [k for k, t in tiers.items() if t["tier"] == "dram"]
        assert warm and all(len(tiers[k]["replicas"][0]) > 1 for k in warm)
        for k, v in vals.items():
            assert s.get(k) == v, k
        buf = bytearray(4 * MIB)
        for k in cold[:3]:        # get_into takes the same path
            n = s.get_into(k, buf)
            assert n == len(vals[k]) and bytes(buf[:n]) == vals[k]
        mixed = cold[:2] + warm[:2]   # a batch mixing cold and striped DRAM objects
        assert s.batch_get(mixed) == [vals[k] for k in mixed]


def test_striped_cold_object_is_promoted_on_hit(cluster, tmp_path):
    m = _cluster(cluster, tmp_path, "on-hit", dram="16MB")
    with store(m.addr) as s:
        vals = _fill(s)
        cold = [k for k in vals if s._index.stat(k)["tier"] == "ssd"]
        assert cold
        for k in vals:            # make room for the promotion: drop what is still in DRAM
            if k not in cold:
                s.remove(k, force=True)
        k = cold[0]
        assert s.get(k) == vals[k]    # served from SSD; queues the promotion
        wait_until(lambda: s._index.stat(k)["tier"] == "dram", what="promotion back to DRAM")
        st = s._index.stat(k)
        assert st["replicas"] and st["cold"]     # one record in DRAM, the SSD copy kept
        assert s.get(k) == vals[k]


def test_striped_put_with_persist_writes_one_durable_record(cluster, tmp_path):
    m = _cluster(cluster, tmp_path, "off", dram="16MB")
    with store(m.addr) as s:
        v = np.random.default_rng(3).bytes(3 * MIB + 5)
        s.put("durable", v, ReplicateConfig(persist=True))
        st = s._index.stat("durable")
        assert st["tier"] == "dram" and len(st["replicas"][0]) > 1
        assert [c["tier"] for c in st["cold"]] == ["ssd"]
        assert s.get("durable") == v
