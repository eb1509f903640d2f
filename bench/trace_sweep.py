"""Exact block-level simulation sweep of the eviction policies over a trace.

Reproduces the figures in docs/eviction.md in about a minute (no store, no
payloads): every registered policy at each capacity, LRU's ratio, and a scan
of PrefixLFRUPolicy.credit_scale.

    python bench/trace_sweep.py [TRACE] [--pcts 2,5,10,20,50] [--scan 0,0.25,0.5,0.75,1]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mooncake_store.master.policy import POLICIES, PrefixLFRUPolicy  # noqa: E402
from mooncake_store.trace import (capacity_blocks, load_trace, simulate_lru,  # noqa: E402
                                  simulate_policy, unbounded_hit_rate)

DEFAULT_TRACE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                             "traces", "conversation_trace.jsonl")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", nargs="?", default=DEFAULT_TRACE)
    ap.add_argument("--pcts", default="2,5,10,20,50")
    ap.add_argument("--scan", default="0,0.25,0.5,0.75,1,1.5",
                    help="credit_scale values of prefix-lfru to scan ('' to skip)")
    args = ap.parse_args()
    trace = load_trace(args.trace)
    pcts = [float(x) for x in args.pcts.split(",")]
    print(f"{args.trace}: {len(trace.requests)} requests, {trace.blocks} blocks, "
          f"{trace.distinct_blocks} distinct, unbounded bound {unbounded_hit_rate(trace):.2%}")
    names = sorted(POLICIES)
    print("\n| capacity | blocks | " + " | ".join(names) + " | best / lru |")
    print("|---:|---:|" + "---:|" * (len(names) + 1))
    for pct in pcts:
        cap = capacity_blocks(trace, pct)
        lru = simulate_lru(trace, cap).hit_rate
        rates = {n: (lru if n == "lru" else simulate_policy(trace, cap, POLICIES[n]).hit_rate)
                 for n in names}
        best = max(v for n, v in rates.items() if n != "lru") if len(names) > 1 else lru
        print(f"| {pct:g}% | {cap} | " + " | ".join(f"{rates[n]:.2%}" for n in names)
              + f" | {best / lru:.3f} |", flush=True)
    if args.scan:
        scan = [float(x) for x in args.scan.split(",")]
        print("\nprefix-lfru credit_scale scan (hit rate / LRU's):")
        print("| credit_scale | " + " | ".join(f"{p:g}%" for p in pcts) + " |")
        print("|---:|" + "---:|" * len(pcts))
        lrus = {p: simulate_lru(trace, capacity_blocks(trace, p)).hit_rate for p in pcts}
        for k in scan:
            t0 = time.perf_counter()
            cells = []
            for p in pcts:
                r = simulate_policy(trace, capacity_blocks(trace, p),
                                    lambda: PrefixLFRUPolicy(credit_scale=k)).hit_rate
                cells.append(f"{r:.2%} ({r / lrus[p]:.3f})")
            took = time.perf_counter() - t0
            print(f"| {k:g} | " + " | ".join(cells) + f" |  <!-- {took:.0f} s -->", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
