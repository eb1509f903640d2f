"""A storage node cut off by the network mid-transfer (veth link down, its own
network namespace): reads of its replicas fail within the timeout and the client
gets the bytes from the other replica; nothing wrong, nothing lost."""
from __future__ import annotations

import sys
import threading
import time

import pytest

import harness
from harness import cf, report
from netns import VethNamespace

from mooncake_store import ReplicateConfig, Store
from mooncake_store.errors import ErrorCode, StoreError

KIB = 1024   # 1 MiB values: each read is a real transfer, long enough to be cut mid-way


@pytest.fixture
def veth():
    v = VethNamespace()
    why = v.create()
    if why:
        pytest.skip(why)
    yield v
    v.remove()


def test_node_cut_off_mid_transfer(cluster, veth, monkeypatch, tmp_path):
    monkeypatch.setenv("MOONCAKE_SHM", "0")       # the cut node is reached over tcp, like another host
    m = cluster.master("--host", veth.host_ip)
    for _ in range(2):
        cluster.node(m.addr, "--host", veth.host_ip, dram="64MB")
    cut_node = cf.Proc([*veth.prefix(), sys.executable, "-c", cf.CLI, "node", "--master", m.addr,
                        "--host", veth.ns_ip, "--dram", "64MB", "--port", "0", "--timeout-ms", "1000",
                        *cf.FAST], "serving", str(tmp_path), "cutnode")
    cluster.procs.append(cut_node)
    s = Store(master=m.addr, global_segment_size=0, rpc_timeout_ms=2000)
    keys = [f"net/{i}" for i in range(48)]
    stop = threading.Event()
    stats = {"attempted": 0, "ok": 0, "failed": 0, "wrong": 0, "max_s": 0.0, "errors": {}, "during_ok": 0}
    times: list[tuple[float, float, bool]] = []
    cut_window = [float("inf"), float("inf")]

    def reader():
        i = 0
        t_end = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < t_end:
            k = keys[i % len(keys)]
            i += 1
            stats["attempted"] += 1
            t0 = time.monotonic()
            try:
                good = harness.soak.check_value(k, s.get(k), KIB) == 1
                stats["ok"] += 1
                stats["wrong"] += not good
                if cut_window[0] <= t0 <= cut_window[1]:
                    stats["during_ok"] += 1
                failed = False
            except StoreError as e:
                stats["failed"] += 1
                name = ErrorCode(e.code).name
                stats["errors"][name] = stats["errors"].get(name, 0) + 1
                failed = True
            took = time.monotonic() - t0
            stats["max_s"] = max(stats["max_s"], took)
            times.append((t0, took, failed))

    try:
        cf.wait_until(lambda: len(s.stats()["nodes"]) == 3, what="3 nodes")
        two = ReplicateConfig(replica_num=2)
        for k in keys:
            s.put(k, harness.soak.make_value(k, 1, KIB), two)
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        time.sleep(1.5)
        veth.cut()
        t_cut = cut_window[0] = time.monotonic()
        time.sleep(6)
        cut_window[1] = time.monotonic()
        veth.heal()
        time.sleep(2)
        stop.set()
        t.join(timeout=30)
        assert not t.is_alive()
        trouble = [st + d - t_cut for st, d, f in times if st + d >= t_cut and (f or d > 1.0)]
        recovery = max(trouble, default=0.0)
        gone = [k for k in keys if not _reads_back(s, k)]
    finally:
        stop.set()
        s.close()
    report("storage node cut off (veth down 6 s, 3 nodes, 2 replicas)", "1 client reading 1 MiB values",
           stats["attempted"], stats["failed"], stats["wrong"], len(gone), recovery,
           max_op_s=round(stats["max_s"], 2), ok_during_cut=stats["during_ok"], errors=stats["errors"])
    assert stats["wrong"] == 0 and not gone, gone[:5]
    assert stats["during_ok"] > 0              # reads went on from the other replicas
    assert stats["max_s"] < 10                 # bounded by the timeouts, not hung


def _reads_back(s, k) -> bool:
    try:
        return harness.soak.check_value(k, s.get(k), KIB) == 1
    except StoreError:
        return False
