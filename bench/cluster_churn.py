"""Puts into a full cluster: every put evicts, the steady state of a KV cache.

Starts a master and one node process on 127.0.0.1 (the test fixtures' launcher), fills the
node and keeps putting fresh keys from a segment-less client, so each put evicts older
values and the freed records' zaps queue up between the node's heartbeats. Reports puts/s,
how many went through a reservation (one control round trip: master/reserve.py) and the
zap counters, then reads the last keys back byte for byte. MOONCAKE_SHM=0 forces tcp.

    MOONCAKE_SHM=0 PYTHONPATH=. python bench/cluster_churn.py [--puts 20000] [--value 64K]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from support.cluster import Cluster, store, wait_nodes  # noqa: E402

from mooncake_store.config import parse_size  # noqa: E402

CHECK_LAST = 200   # keys read back at the end (the newest survive eviction)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--puts", type=int, default=20_000)
    ap.add_argument("--value", default="64K", help="value size (K/M suffixes)")
    ap.add_argument("--dram", default="64MB", help="the node's DRAM segment")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    size = parse_size(a.value)
    c = Cluster(tempfile.mkdtemp(prefix="mcs-bench-"))
    try:
        m = c.master()
        c.node(m.addr, dram=a.dram)
        wait_nodes(m.addr, 1)
        with store(m.addr) as s:
            slots = 16
            src = np.random.default_rng(7).integers(0, 255, slots * size, dtype=np.uint8)
            views = [src[i * size:(i + 1) * size] for i in range(slots)]
            t0 = time.perf_counter()
            for i in range(a.puts):
                s.put_from(f"churn/{i}", views[i % slots])
            took = time.perf_counter() - t0
            st = s.stats()
            first = max(0, a.puts - CHECK_LAST)
            exact = sum(1 for i in range(first, a.puts)
                        if s.get(f"churn/{i}") == views[i % slots].tobytes())
        out = {"puts": a.puts, "value_bytes": size, "dram": a.dram,
               "puts_per_s": round(a.puts / took), "us_per_put": round(took / a.puts * 1e6, 1),
               "reserved_puts": st.get("reserved_puts", 0), "evictions": st.get("evictions", 0),
               **{k: st.get(k, 0) for k in ("zaps_queued", "zaps_sent", "zaps_skipped",
                                            "zaps_deferred", "zaps_dropped")},
               "read_back_exact": f"{exact}/{a.puts - first}"}
        if a.json:
            print(json.dumps(out))
        else:
            for k, v in out.items():
                print(f"{k:>16}: {v:,}" if isinstance(v, int) else f"{k:>16}: {v}")
    finally:
        c.close()


if __name__ == "__main__":
    main()
