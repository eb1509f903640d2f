"""Cold tiers on a cluster node: demotion rate and cold-read bandwidth against DRAM reads.

    python bench/cluster_tiers.py                      # 1 node, 64 MB DRAM, 4 MiB values
    python bench/cluster_tiers.py --dram 256MB --objects 128 --value-mib 4 --json out.json

Starts a master and one `mstore node --ssd` process on 127.0.0.1, writes twice
what DRAM holds (the master demotes the overflow to the node's SSD while the
puts go on), then reads every object with get_into: the ones still in DRAM
(shm or tcp transfer) and the ones on SSD (staged by the node, then the same
transfer). Reported: put MB/s, demotions, DRAM-read and cold-read GB/s and
their ratio, measured in the same run (promotion off so cold stays cold).

    python bench/cluster_tiers.py --readers 4      # + cold reads from 4 threads at once

With --readers N the cold objects are also read by N client threads at once,
on a node with one staging server and on one with the default four
(MOONCAKE_STAGE_SERVERS), in the same run: the ratio shows what staging
several cold reads of one node side by side gains.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import numpy as np  # noqa: E402

from mooncake_store.config import parse_size  # noqa: E402
from support.cluster import Cluster, store, wait_nodes  # noqa: E402


def _read_all(s, keys, buf) -> float:
    t0 = time.perf_counter()
    for k in keys:
        s.get_into(k, buf)
    return time.perf_counter() - t0


def _read_parallel(s, keys, value: int, readers: int) -> float:
    """Seconds for `readers` threads to read `keys` (split between them) with get_into."""
    from support.procs import run_threads

    bufs = [np.empty(value, dtype=np.uint8) for _ in range(readers)]
    t0 = time.perf_counter()
    run_threads(lambda i: _read_all(s, keys[i::readers], bufs[i]), readers)
    return time.perf_counter() - t0


def parallel_cold(args) -> dict:
    """Cold reads from `args.readers` threads: a node with 1 staging server, then 4."""
    out = {}
    for servers in (1, 4):
        os.environ["MOONCAKE_STAGE_SERVERS"] = str(servers)
        try:
            out[servers] = run(args, readers=args.readers)["parallel_cold_read_gb_s"]
        finally:
            os.environ.pop("MOONCAKE_STAGE_SERVERS", None)
    return {"readers": args.readers, "cold_read_gb_s_1_server": out[1],
            "cold_read_gb_s_4_servers": out[4],
            "four_over_one": round(out[4] / out[1], 3) if out[1] and out[4] else None}


def run(args, readers: int = 0) -> dict:
    tmp = tempfile.mkdtemp(prefix="mcs-tiers-")
    value = args.value_mib << 20
    dram = parse_size(args.dram, "--dram")
    n = args.objects or max(4, 2 * dram // value)
    c = Cluster(tmp)
    try:
        m = c.master("--promotion", "off", "--stripe-size", str(2 * value))
        c.node(m.addr, "--ssd", f"{tmp}/ssd:{max(4 * n * value, 64 << 20)}", dram=args.dram)
        wait_nodes(m.addr, 1)
        with store(m.addr, rpc_timeout_ms=10_000) as s:
            data = np.random.default_rng(1).integers(0, 255, value, dtype=np.uint8)
            t0 = time.perf_counter()
            for i in range(n):
                data[:8] = i
                s.put(f"v{i}", data)
            put_s = time.perf_counter() - t0
            tiers = {k: s._index.stat(k)["tier"] for k in (f"v{i}" for i in range(n))}
            hot = [k for k, t in tiers.items() if t == "dram"]
            cold = [k for k, t in tiers.items() if t != "dram"]
            buf = np.empty(value, dtype=np.uint8)
            best_hot = min(_read_all(s, hot, buf) for _ in range(args.rounds)) if hot else 0.0
            best_cold = min(_read_all(s, cold, buf) for _ in range(args.rounds)) if cold else 0.0
            best_par = min(_read_parallel(s, cold, value, readers) for _ in range(args.rounds)) \
                if readers and cold else 0.0
            st = s.stats()
    finally:
        c.close()
    gbps = lambda k, t: round(len(k) * value / t / 1e9, 3) if t else None  # noqa: E731
    hot_gbps, cold_gbps = gbps(hot, best_hot), gbps(cold, best_cold)
    return {"objects": n, "value_mib": args.value_mib, "dram": args.dram,
            "put_mb_s": round(n * value / put_s / 1e6, 1), "put_room_waits": st.get("put_room_waits"),
            "demotions": st["cold"]["demotions"], "in_dram": len(hot), "on_ssd": len(cold),
            "dram_read_gb_s": hot_gbps, "cold_read_gb_s": cold_gbps,
            "cold_over_dram": round(cold_gbps / hot_gbps, 3) if hot_gbps and cold_gbps else None,
            "parallel_cold_read_gb_s": gbps(cold, best_par),
            "transport": "tcp" if os.environ.get("MOONCAKE_SHM") == "0" else "shm (same host)"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dram", default="64MB")
    ap.add_argument("--objects", type=int, default=0, help="default: twice what DRAM holds")
    ap.add_argument("--value-mib", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--readers", type=int, default=0,
                    help="also compare cold reads from this many threads: 1 vs 4 staging servers")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    out = run(args)
    if args.readers > 1:
        out["parallel"] = parallel_cold(args)
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
