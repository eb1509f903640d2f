"""Cold copies when a node dies (real master and three `mstore node --ssd` processes):
objects with replica_num=2 keep two cold copies on distinct nodes (a tiered node fetches
the second from the first); after kill -9 of a node, reads fall back to a surviving copy
at once, the dead node's copies leave the index (`mstore stat` names only live nodes), the
copy count is restored on the survivors, and objects whose only copy died are removed and
counted, never served."""
from __future__ import annotations

import os

from mooncake_store import ReplicateConfig

from support.cluster import store, wait_nodes
from support.net import free_port
from support.procs import wait_until

VALUE = 100_000


def _copies(s, key: str) -> list[str]:
    return [c["address"] for c in s._index.stat(key)["cold"]]


def _metric(port: int, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def test_cold_copies_survive_a_node_kill9(cluster, tmp_path):
    mport = free_port()
    m = cluster.master("--promotion", "off", "--metrics-port", str(mport))
    nodes = [cluster.node(m.addr, "--ssd", f"{tmp_path}/ssd{i}:64MB", dram="8MB")
             for i in range(3)]
    wait_nodes(m.addr, 3)
    with store(m.addr) as s:
        two, one = {}, {}
        for i in range(40):         # the oldest: demoted first
            one[f"r1-{i}"] = v = os.urandom(VALUE)
            s.put(f"r1-{i}", v)
        for i in range(140):        # + 28 MB of replica_num=2 objects: 32 MB into 24 MB of DRAM
            two[f"r2-{i}"] = v = os.urandom(VALUE)
            s.put(f"r2-{i}", v, ReplicateConfig(replica_num=2))
        # Each node holding a DRAM replica copies it to its own SSD before the DRAM goes.
        wait_until(lambda: s.stats()["cold"]["tasks_in_flight"] == 0, what="demotions done")
        cold2 = [k for k in two if s._index.stat(k)["tier"] == "ssd"]
        assert len(cold2) >= 10
        for k in cold2:
            assert len(set(_copies(s, k))) == 2, k
        # The victim: the node most reads of these objects go to.
        rpcs = [s._index.stat(k)["read_from"].partition("@")[2] for k in cold2]
        dead_rpc = max(set(rpcs), key=rpcs.count)
        node_id = next(c["node"] for k in cold2 for c in s._index.stat(k)["cold"]
                       if c["address"] == dead_rpc)
        endpoint = s.stats()["nodes"][node_id]["endpoint"]
        dead = next(n for n in nodes if n.endpoint == endpoint)
        lone = [k for k in one if _copies(s, k) == [dead_rpc]]
        assert lone
        on_dead = [k for k in cold2 if dead_rpc in _copies(s, k)]
        read_dead = [k for k, r in zip(cold2, rpcs) if r == dead_rpc]
        assert read_dead
        dead.kill()
        # At once (before the master notices): reads fall back to the surviving copy.
        for k in read_dead[:5]:
            assert s.get(k) == two[k], k
        assert s.stats()["cold_read_fallbacks"] >= 1
        # The master drops the node and its copies; the survivors get the count back.
        wait_until(lambda: len(s.stats()["nodes"]) == 2, what="the dead node dropped")
        for k in cold2:
            assert dead_rpc not in _copies(s, k)
        wait_until(lambda: all(len(set(_copies(s, k))) == 2 for k in cold2
                               if s._index.stat(k)["tier"] == "ssd"),
                   timeout=30, what="two cold copies again on the surviving nodes")
        assert s.stats()["cold"]["cold_repairs"] > 0     # fetched from a surviving copy
        for k, v in two.items():
            assert s.get(k) == v, k
        # replica_num=1 objects whose only copy was on the dead node are gone, and counted.
        for k in lone:
            assert not s.exists(k), k
        st = s.stats()
        assert st["cold"]["cold_lost"] >= len(lone)
        assert st["cold"]["cold_copies_lost"] >= len(on_dead)
        assert _metric(mport, "mstore_master_tiers_cold_lost") == st["cold"]["cold_lost"]
        assert _metric(mport, "mstore_master_lost") >= len(lone)
        for k in set(one) - set(lone):
            assert not s.exists(k) or s.get(k) == one[k], k


def test_written_through_object_gets_its_durable_copy_back(cluster, tmp_path):
    """persist=True with two DRAM replicas: the node holding the durable copy dies; the
    surviving replica's node writes a new one (the object never stays without it)."""
    m = cluster.master("--promotion", "off")
    nodes = [cluster.node(m.addr, "--ssd", f"{tmp_path}/ssd{i}:64MB", dram="8MB")
             for i in range(2)]
    wait_nodes(m.addr, 2)
    with store(m.addr) as s:
        v = os.urandom(VALUE)
        s.put("durable", v, ReplicateConfig(replica_num=2, persist=True))
        first = _copies(s, "durable")
        assert len(first) == 1
        node_id = s._index.stat("durable")["cold"][0]["node"]
        endpoint = s.stats()["nodes"][node_id]["endpoint"]
        next(n for n in nodes if n.endpoint == endpoint).kill()
        wait_until(lambda: len(s.stats()["nodes"]) == 1, what="the dead node dropped")
        wait_until(lambda: _copies(s, "durable") not in ([], first),
                   what="a new durable copy on the surviving node")
        st = s._index.stat("durable")
        assert st["tier"] == "dram" and len(st["replicas"]) == 1
        assert s.get("durable") == v


def test_restarted_node_does_not_bring_back_replaced_values(cluster, tmp_path):
    """A node dies holding SSD copies; meanwhile some of those keys are written again with
    new values of the same size. Restarted on its directory, the node's records of the
    untouched keys are readable again, its records of the rewritten keys are stale: they
    are forgotten, never attached, so no read can return the old bytes."""
    m = cluster.master("--promotion", "off")
    ssd = f"{tmp_path}/ssd:64MB"
    a = cluster.node(m.addr, "--ssd", ssd, dram="8MB")
    wait_nodes(m.addr, 1)
    with store(m.addr) as s:
        vals = {}
        for i in range(120):
            vals[f"k{i}"] = v = os.urandom(VALUE)
            s.put(f"k{i}", v)
        cold = [k for k in vals if s._index.stat(k)["tier"] == "ssd"]
        assert len(cold) >= 10
        b = cluster.node(m.addr, dram="32MB")     # DRAM only: the new values land here
        wait_nodes(m.addr, 2)
        a.kill()
        wait_until(lambda: len(s.stats()["nodes"]) == 1, what="node A dropped")
        rewritten = cold[:5]
        for k in rewritten:
            assert not s.exists(k)
            vals[k] = v = os.urandom(VALUE)       # same size, new bytes
            s.put(k, v)
        cluster.node(m.addr, "--ssd", ssd, dram="8MB")
        wait_until(lambda: len(s.stats()["nodes"]) == 2 and all(s.exists(k) for k in cold),
                   what="node A back with its SSD records")
        for k in cold:
            assert s.get(k) == vals[k], k
        for k in rewritten:
            assert s._index.stat(k)["cold"] == [], k   # A's old record was not attached
        b.kill()          # the new values die with B: nothing may fall back to A's old ones
        wait_until(lambda: len(s.stats()["nodes"]) == 1, what="node B dropped")
        for k in rewritten:
            assert not s.exists(k), k
        for k in set(cold) - set(rewritten):
            assert s.get(k) == vals[k], k


def test_s3_copies_of_a_dead_node_are_rescued_by_another(cluster, tmp_path, seaweedfs, s3_bucket,
                                                        monkeypatch):
    """Two nodes with S3 tiers in one bucket (own prefixes). Node A dies: objects whose only
    copy was in A's S3 prefix are copied by node B into its prefix and read through B,
    byte-exact; A's SSD-only objects are gone and counted."""
    monkeypatch.setenv("MOONCAKE_S3_ACCESS_KEY_ID", seaweedfs.access_key)
    monkeypatch.setenv("MOONCAKE_S3_SECRET_ACCESS_KEY", seaweedfs.secret_key)
    s3 = ["--s3-bucket", s3_bucket, "--s3-endpoint-url", seaweedfs.endpoint,
          "--s3-region", seaweedfs.region, "--cold-codec", "none"]
    m = cluster.master("--promotion", "off")
    a = cluster.node(m.addr, "--ssd", f"{tmp_path}/ssd:2MB", "--s3-prefix", "node-a/", *s3,
                     dram="8MB")
    wait_nodes(m.addr, 1)
    with store(m.addr) as s:
        vals = {}
        for i in range(120):      # into A alone: DRAM -> SSD (2 MB) -> S3
            vals[f"k{i}"] = v = os.urandom(VALUE)
            s.put(f"k{i}", v)
        wait_until(lambda: s.stats()["cold"]["cold_moves"] > 0, what="push-downs to A's S3")
        cluster.node(m.addr, "--s3-prefix", "node-b/", *s3, dram="8MB")
        wait_nodes(m.addr, 2)
        wait_until(lambda: s.stats()["cold"]["tasks_in_flight"] == 0, what="demotions done")
        # Written through to A's S3 with its only DRAM replica on A: rescued as well.
        vals["durable"] = v = os.urandom(VALUE)
        s.put("durable", v, ReplicateConfig(persist=True, preferred_segment=a.endpoint))
        assert [c["tier"] for c in s._index.stat("durable")["cold"]] == ["s3"]
        where = {k: s._index.stat(k)["read_from"] for k in vals}
        where["durable"] = "s3@"
        in_s3 = [k for k, t in where.items() if t.startswith("s3@")]
        on_ssd = [k for k, t in where.items() if t.startswith("ssd@")]
        assert in_s3 and on_ssd
        a.kill()
        wait_until(lambda: len(s.stats()["nodes"]) == 1, what="node A dropped")
        wait_until(lambda: s.stats()["cold"]["tasks_in_flight"] == 0, timeout=60,
                   what="rescues done")
        b_rpc = next(iter(s.stats()["cold"]["nodes"].values()))["rpc"]
        for k in in_s3:
            assert s._index.stat(k)["read_from"] == f"s3@{b_rpc}", k
            assert s.get(k) == vals[k], k
        for k in on_ssd:
            assert not s.exists(k), k
        st = s.stats()["cold"]
        assert st["cold_rescued"] == len(in_s3) and st["cold_lost"] >= len(on_ssd)
