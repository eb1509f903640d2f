"""The CI-sized soaks (bench/soak.py): 10 s of mixed ops on an embedded store and one
minute on a 3-node cluster, both with SSD tiers under eviction pressure; every read
verified, resources bounded."""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import soak  # noqa: E402


def test_value_encoding_catches_wrong_bytes():
    v = soak.make_value("a", 3, 8)
    assert soak.check_value("a", v, 8) == 3
    assert soak.check_value("b", v, 8) is None                 # another key's bytes
    assert soak.check_value("a", v[:-1] + b"\0", 8) is None    # one byte off
    assert soak.check_value("a", soak.make_value("a", 4, 8), 8) == 4


def _soak(monkeypatch, **kw) -> dict:
    """One bench/soak.py run without an ambient secret; no wrong bytes, no unexpected errors."""
    monkeypatch.delenv("MOONCAKE_AUTH_TOKEN", raising=False)
    out = soak.run(soak.argparse.Namespace(minutes=0, max_kib=32, progress=False, **kw))
    assert out["wrong_bytes"] == 0, out["wrong_examples"]
    assert not [k for k in out["errors_by_code"] if k.startswith("unexpected")], out["errors_by_code"]
    return out


def test_short_soak(monkeypatch):
    out = _soak(monkeypatch, seconds=10, threads=3, keys=1500, dram="16MB", ssd="256MB",
                cluster=False)
    assert set(out["ops_by_kind"]) == set(soak.Worker.WEIGHTS)
    st = out["store"]["stats"]
    assert st["evictions"] > 0 and st["demotions"] > 0 and st["cold_hits"] > 0
    g = out["growth_after_warmup"]
    assert g["fds"] <= soak.FD_BOUND and g["threads"] <= soak.THREAD_BOUND
    assert g["rss_mib"] <= soak.RSS_BOUND_MIB
    assert out["ok"]


def test_short_cluster_soak(monkeypatch):
    """The CI's one-minute cluster soak: the same workload through a master + 3 node
    processes, each with an SSD tier the master demotes to (DRAM is a third of the
    working set)."""
    out = _soak(monkeypatch, seconds=60, threads=2, keys=600, dram="4MB", ssd="64MB",
                cluster=True)
    assert out["ops"] > 0 and set(out["server_growth_after_warmup"]) == {"master1", "node2", "node3", "node4"}
    tiers = out["store"]["tiers"]
    assert tiers["demotions"] > 0 and out["store"]["stats"]["cold_reads"] > 0, out["store"]
    assert out["ok"]
