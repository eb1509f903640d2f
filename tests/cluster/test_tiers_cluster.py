"""Cold tiers on cluster nodes: real master and node processes on 127.0.0.1 (`mstore node
--ssd`, S3 through SeaweedFS). Demotion under DRAM pressure, cold reads staged by the node
and moved over the transfer engine, `mstore stat`/`status`, warm restart after kill -9,
promotion on hit."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from support.cluster import CLI, store, wait_nodes
from support.net import free_port
from support.procs import wait_until

VALUE = 100_000          # 120 of these are ~1.5x an 8 MB DRAM segment
N = 120


def _fill(s, n: int = N, prefix: str = "k") -> dict[str, bytes]:
    vals = {}
    for i in range(n):
        v = os.urandom(VALUE)
        s.put(f"{prefix}{i}", v)
        vals[f"{prefix}{i}"] = v
    return vals


def _tiers(s, keys) -> dict[str, str]:
    return {k: s._index.stat(k)["tier"] for k in keys}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True,
                          timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__)))))


def test_demotion_to_ssd_keeps_every_object_and_stat_shows_it(cluster, tmp_path):
    m = cluster.master("--promotion", "off")
    node = cluster.node(m.addr, "--ssd", f"{tmp_path}/ssd:64MB", dram="8MB")
    wait_nodes(m.addr, 1)
    with store(m.addr) as s:
        vals = _fill(s)   # more than DRAM holds: puts never fail, demotion makes room
        st = s.stats()
        assert st["cold"]["demotions"] > 0 and st["evictions"] == 0
        tiers = _tiers(s, vals)
        cold = [k for k, t in tiers.items() if t == "ssd"]
        assert cold and len(cold) < N
        for k, v in vals.items():
            assert s.get(k) == v, k
        assert s.stats()["cold_reads"] >= len(cold)   # promotion off: they stay on SSD
        assert _tiers(s, cold) == {k: "ssd" for k in cold}
        node_id = next(iter(s.stats()["nodes"]))
    # mstore stat names the tier and the node of the cold copy.
    r = _cli("stat", cold[0], "--master", m.addr)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["tier"] == "ssd" and st["replicas"] == []
    assert st["cold"] == [{"tier": "ssd", "node": node_id, "address": st["read_from"][4:]}]
    # mstore status shows the node's tier usage.
    r = _cli("status", "--master", m.addr)
    assert r.returncode == 0, r.stderr
    assert "ssd" in r.stdout and node_id in r.stdout
    r = _cli("status", "--json", "--master", m.addr)
    usage = json.loads(r.stdout)["cold"]["nodes"][node_id]["tiers"]["ssd"]
    assert usage["objects"] >= len(cold) and usage["used"] > 0
    assert node.alive


def test_warm_restart_on_the_same_ssd_directory(cluster, tmp_path):
    m = cluster.master("--promotion", "off")
    ssd = f"{tmp_path}/ssd:64MB"
    node = cluster.node(m.addr, "--ssd", ssd, dram="8MB")
    wait_nodes(m.addr, 1)
    with store(m.addr) as s:
        vals = _fill(s)
        cold = [k for k, t in _tiers(s, vals).items() if t == "ssd"]
        assert cold
        node.kill()   # SIGKILL: DRAM is gone, the SSD records stay
        torn = _tear_last_record(f"{tmp_path}/ssd", cold)
        cold.remove(torn)
        cluster.node(m.addr, "--ssd", ssd, dram="8MB")
        # The master drops the dead node (its copies with it), the new one brings the SSD back.
        wait_until(lambda: len(s.stats()["nodes"]) == 1 and
                   s.stats()["cold"]["nodes"] and all(s.exists(k) for k in cold),
                   what="the SSD inventory re-registered")
        for k in cold:
            assert s.get(k) == vals[k], k
        assert _tiers(s, cold) == {k: "ssd" for k in cold}
        assert not s.exists(torn)     # cut mid-record: skipped at the scan, never served
        # DRAM-only objects died with the process; nothing else reads back wrong.
        for k in set(vals) - set(cold):
            assert not s.exists(k) or s.get(k) == vals[k]


def _tear_last_record(path: str, keys: list[str]) -> str:
    """Truncate the SSD data file in the middle of the last of `keys`' records."""
    from mooncake_store.node.ssd import DATA_NAME, SSDTier

    with SSDTier(path, "64MB") as t:
        where = {kb.decode(): loc for kb, _hdr, loc in t.scan()}
    key = max((k for k in keys if k in where), key=lambda k: where[k].offset)
    os.truncate(os.path.join(path, DATA_NAME), where[key].offset + where[key].length // 2)
    return key


def test_restarted_master_rebuilds_cold_copies(cluster, tmp_path):
    """Nothing is persisted on the master: a new one learns the SSD copies from the node."""
    port = free_port()
    m = cluster.master("--promotion", "off", port=port)
    cluster.node(m.addr, "--ssd", f"{tmp_path}/ssd:64MB", dram="8MB")
    wait_nodes(m.addr, 1)
    with store(m.addr) as s:
        vals = _fill(s)
        cold = [k for k, t in _tiers(s, vals).items() if t == "ssd"]
        assert cold
        m.kill()
        cluster.master("--promotion", "off", port=port)
        wait_until(lambda: all(s.exists(k) for k in cold), what="cold copies re-registered")
        for k in cold:   # (a DRAM record not yet invalidated may be found too: same bytes)
            assert [c["tier"] for c in s._index.stat(k)["cold"]] == ["ssd"], k
        for k, v in vals.items():
            assert s.get(k) == v, k


def test_promotion_on_hit(cluster, tmp_path):
    m = cluster.master("--promotion", "on-hit")
    cluster.node(m.addr, "--ssd", f"{tmp_path}/ssd:64MB", dram="8MB")
    wait_nodes(m.addr, 1)
    with store(m.addr) as s:
        vals = _fill(s)
        # Make room for promotions: drop the newest objects (still in DRAM).
        newest = [f"k{i}" for i in range(N - 40, N)]
        for k in newest:
            s.remove(k, force=True)
        cold = [k for k, t in _tiers(s, set(vals) - set(newest)).items() if t == "ssd"][:5]
        assert cold
        for k in cold:
            assert s.get(k) == vals[k]      # served from SSD; queues a promotion
        wait_until(lambda: all(t == "dram" for t in _tiers(s, cold).values()),
                   what="promotion back to DRAM")
        for k in cold:
            assert s.get(k) == vals[k]      # now from DRAM
            st = s._index.stat(k)
            assert st["replicas"] and st["cold"]   # the SSD copy stays: re-demotion is free
        assert s.stats()["cold"]["promotions"] >= len(cold)


def _ssd_over_s3_node(cluster, tmp_path, seaweedfs, s3_bucket, monkeypatch):
    """A master (no promotion) and one node: 8 MB DRAM over a 2 MB SSD over SeaweedFS S3."""
    monkeypatch.setenv("MOONCAKE_S3_ACCESS_KEY_ID", seaweedfs.access_key)
    monkeypatch.setenv("MOONCAKE_S3_SECRET_ACCESS_KEY", seaweedfs.secret_key)
    m = cluster.master("--promotion", "off")
    cluster.node(m.addr, "--ssd", f"{tmp_path}/ssd:2MB", "--s3-bucket", s3_bucket,
                 "--s3-endpoint-url", seaweedfs.endpoint, "--s3-region", seaweedfs.region,
                 "--cold-codec", "none", dram="8MB")
    wait_nodes(m.addr, 1)
    return m


def test_ssd_full_pushes_down_to_s3(cluster, tmp_path, seaweedfs, s3_bucket, monkeypatch):
    m = _ssd_over_s3_node(cluster, tmp_path, seaweedfs, s3_bucket, monkeypatch)
    with store(m.addr) as s:
        vals = _fill(s)
        wait_until(lambda: s.stats()["cold"]["cold_moves"] > 0, what="a push-down reported")
        tiers = _tiers(s, vals)
        assert "s3" in tiers.values() and "ssd" in tiers.values()
        for k, v in vals.items():
            assert s.get(k) == v, (k, tiers[k])


def test_s3_frozen_node_keeps_heartbeating(cluster, tmp_path, seaweedfs, s3_bucket, monkeypatch):
    """Push-downs to a frozen S3 stall only the node's cold worker: the node stays a member
    and its DRAM and SSD objects stay readable; once S3 is back everything is readable."""
    m = _ssd_over_s3_node(cluster, tmp_path, seaweedfs, s3_bucket, monkeypatch)
    with store(m.addr) as s:
        vals = _fill(s, 100)         # the SSD (2 MB) is full: more demotions push down to S3
        wait_until(lambda: s.stats()["cold"]["cold_moves"] > 0, what="a push-down to S3")
        seaweedfs.pause()
        try:
            more = {}
            for i in range(100, 106):  # DRAM still has room; their demotions need S3
                v = os.urandom(VALUE)
                s.put(f"k{i}", v)
                more[f"k{i}"] = v
            time.sleep(2.5)            # well past node_ttl (1 s) of the test master
            st = s.stats()
            assert len(st["nodes"]) == 1 and st["cold"]["tasks_in_flight"] > 0
            readable = {k: t for k, t in _tiers(s, vals).items() if t in ("dram", "ssd")}
            assert "ssd" in readable.values()
            for k in readable:
                assert s.get(k) == vals[k]
        finally:
            seaweedfs.resume()
        vals.update(more)
        for k, v in vals.items():
            assert s.get(k) == v, k


def test_put_that_cannot_fit_fails_without_waiting_for_demotions(cluster, tmp_path):
    """Backpressure only where a cold tier can make room: a value larger than any DRAM
    segment gets NoSpace at once, on a DRAM-only node as on a tiered one."""
    from mooncake_store.errors import NoSpace

    m = cluster.master("--stripe-size", "64MB")
    cluster.node(m.addr, dram="8MB")
    cluster.node(m.addr, "--ssd", f"{tmp_path}/ssd:64MB", dram="8MB")
    wait_nodes(m.addr, 2)
    with store(m.addr) as s:
        try:
            s.put("big", b"x" * (12 << 20))
        except NoSpace:
            pass
        else:
            raise AssertionError("a 12 MB value fitted into 8 MB segments")
        assert s.stats()["put_room_waits"] == 1   # asked once, told "no", not retried
        s.put("small", b"y" * 1000)
        assert s.get("small") == b"y" * 1000


def test_persist_writes_through_to_the_nodes_durable_tier(cluster, tmp_path, seaweedfs, s3_bucket,
                                                          monkeypatch):
    """ReplicateConfig(persist=True): the put returns once the node holding the replica has
    copied it to its last tier (S3 here); the DRAM copy stays and serves reads."""
    from mooncake_store import ReplicateConfig

    monkeypatch.setenv("MOONCAKE_S3_ACCESS_KEY_ID", seaweedfs.access_key)
    monkeypatch.setenv("MOONCAKE_S3_SECRET_ACCESS_KEY", seaweedfs.secret_key)
    m = cluster.master("--promotion", "off")
    cluster.node(m.addr, "--ssd", f"{tmp_path}/ssd:64MB", "--s3-bucket", s3_bucket,
                 "--s3-endpoint-url", seaweedfs.endpoint, "--s3-region", seaweedfs.region,
                 dram="8MB")
    wait_nodes(m.addr, 1)
    with store(m.addr) as s:
        v = os.urandom(VALUE)
        s.put("durable", v, ReplicateConfig(persist=True))
        st = s._index.stat("durable")
        assert st["tier"] == "dram" and [c["tier"] for c in st["cold"]] == ["s3"]
        assert s.get("durable") == v
        s.put("plain", v)
        assert s._index.stat("plain")["cold"] == []


def test_concurrent_cold_reads_use_several_staging_servers(cluster, tmp_path):
    """Readers of one node's SSD objects are staged by several servers of that node (one
    call each at a time), taken in turn; four threads reading at once all get their bytes."""
    from support.procs import run_threads

    m = cluster.master("--promotion", "off")
    cluster.node(m.addr, "--ssd", f"{tmp_path}/ssd:64MB", dram="8MB")
    wait_nodes(m.addr, 1)
    with store(m.addr) as s:
        vals = _fill(s)
        cold = [k for k, t in _tiers(s, vals).items() if t == "ssd"]
        assert len(cold) >= 8

        def read(i: int) -> None:
            for k in cold[i::4]:
                assert s.get(k) == vals[k], k

        run_threads(read, 4)
        st = s.stats()
        assert st["cold_reads"] >= len(cold) and st["cold_read_servers"] >= 2
