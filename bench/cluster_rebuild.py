"""Index rebuild at scale: how long a restarted master takes to know a full node again.

Starts a master and one node on 127.0.0.1, fills the node with small values, removes every
other one (so the segment is as fragmented as a cache under eviction), waits for the zaps,
then kill -9s the master and starts a new one on the same port. Reports the time until the
node has re-registered with its whole inventory (the node's scan plus the master's adoption)
and checks a sample of the kept keys byte for byte. MOONCAKE_SHM=0 forces tcp.

    PYTHONPATH=. python bench/cluster_rebuild.py [--objects 200000] [--value 4K] [--dram 2GB]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from support.cluster import Cluster, store, wait_nodes  # noqa: E402
from support.net import free_port  # noqa: E402

from mooncake_store.config import parse_size  # noqa: E402

BATCH = 256
SAMPLE = 500


def _value(i: int, size: int) -> bytes:
    return (i.to_bytes(8, "little") * (size // 8 + 1))[:size]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=200_000)
    ap.add_argument("--value", default="4K", help="value size (K/M suffixes)")
    ap.add_argument("--dram", default="2GB", help="the node's DRAM segment")
    ap.add_argument("--node-ttl-ms", type=int, default=5000, help="the masters' (the default's)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    size = parse_size(a.value)
    c = Cluster(tempfile.mkdtemp(prefix="mcs-bench-"))
    port = free_port()
    out: dict = {"objects": a.objects, "value_bytes": size, "dram": a.dram}
    try:
        m = c.master(port=port, node_ttl_ms=a.node_ttl_ms)
        c.node(m.addr, dram=a.dram)
        wait_nodes(m.addr, 1)
        keys = [f"rb/{i}" for i in range(a.objects)]
        with store(m.addr, rpc_timeout_ms=30_000) as s:
            t = time.monotonic()
            for lo in range(0, a.objects, BATCH):
                chunk = keys[lo:lo + BATCH]
                codes = s.batch_put(chunk, [_value(lo + j, size) for j in range(len(chunk))])
                assert all(r == 0 for r in codes), codes
            out["fill_s"] = round(time.monotonic() - t, 2)
            gone = keys[1::2]
            for lo in range(0, len(gone), 32_768):   # under max_batch_size
                s.batch_remove(gone[lo:lo + 32_768])
            deadline = time.monotonic() + 120
            while s.stats().get("zaps_done", 0) < a.objects // 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            out["zaps_done"] = s.stats().get("zaps_done", 0)
        kept = keys[0::2]
        m.kill()
        t = time.monotonic()
        m2 = c.master(port=port, node_ttl_ms=a.node_ttl_ms)
        with store(m2.addr, rpc_timeout_ms=30_000) as s:
            while time.monotonic() - t < 600:
                st = s.stats()
                if st["nodes"] and st["objects"] >= len(kept):
                    break
                time.sleep(0.05)
            out["rebuild_s"] = round(time.monotonic() - t, 2)
            out["objects_after"] = s.stats()["objects"]
            step = max(1, len(kept) // SAMPLE)
            sample = list(range(0, a.objects, 2))[::step]
            got = s.batch_get([keys[i] for i in sample])
            out["sample_exact"] = sum(b == _value(i, size) for i, b in zip(sample, got)
                                      if b is not None)
            out["sample"] = len(sample)
    finally:
        c.close()
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>16}: {v:,}" if isinstance(v, int) else f"{k:>16}: {v}")


if __name__ == "__main__":
    main()
