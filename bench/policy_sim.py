"""Eviction policies on a trace and on its halves: the overfitting check.

Drives real policy objects with the calls the store's index makes
(`mooncake_store.trace.simulate_policy`: per request, count the leading cached
blocks as hits, then touch every block in order, inserting the missing ones),
capacity counted in blocks, next to the exact LRU of issue [E]. Each split is
a trace of its own (its capacity is a share of *its* distinct blocks): tune on
the first half, confirm on the second and on the whole trace.

    python bench/policy_sim.py [TRACE] [--splits full,first,second] [--pcts 2,5,10,20,50]
        [--policy prefix-lfru] [--policy "prefix-lfru:credit_scale=1.5"] [--jobs 2]
    python bench/policy_sim.py --cost [--keys 200000] [--policy NAME]   # bytes/key, us/op

A policy is a registered name, optionally with constructor arguments after ':'.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mooncake_store.master.policy import POLICIES  # noqa: E402
from mooncake_store.trace import (Trace, capacity_blocks, load_trace, simulate_lru,  # noqa: E402
                                  simulate_policy, unbounded_hit_rate)

DEFAULT_TRACE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                             "traces", "conversation_trace.jsonl")


def split(trace: Trace, name: str) -> Trace:
    n = len(trace.requests) // 2
    if name == "full":
        return trace
    if name == "first":
        return Trace(f"{trace.path}[:{n}]", trace.requests[:n])
    if name == "second":
        return Trace(f"{trace.path}[{n}:]", trace.requests[n:])
    raise SystemExit(f"unknown split {name!r} (full, first, second)")


def parse_policy(spec: str) -> tuple[str, dict]:
    name, _, args = spec.partition(":")
    if name not in POLICIES:
        raise SystemExit(f"unknown policy {name!r}; registered: {', '.join(sorted(POLICIES))}")
    kwargs = {}
    for item in filter(None, args.split(",")):
        k, _, v = item.partition("=")
        kwargs[k.strip()] = float(v)
    return name, kwargs


def _point(path: str, split_name: str, pct: float, spec: str) -> tuple[str, float, str, float]:
    trace = split(load_trace(path), split_name)
    cap = capacity_blocks(trace, pct)
    if spec == "lru":
        return split_name, pct, spec, simulate_lru(trace, cap).hit_rate
    name, kwargs = parse_policy(spec)
    return split_name, pct, spec, simulate_policy(trace, cap,
                                                  lambda: POLICIES[name](**kwargs)).hit_rate


def _fill_and_churn(p, keys: list[str], n: int) -> tuple[float, float]:
    """n keys in 20-key requests, then 2n evict + insert; seconds per op of each part."""
    t0 = time.perf_counter()
    for j in range(0, n, 20):
        chunk = keys[j:j + 20]
        p.hint_prefix(chunk)
        for k in chunk:
            p.on_insert(k, 1)
    t1 = time.perf_counter()
    for j in range(n, 3 * n, 20):
        chunk = keys[j:j + 20]
        p.hint_prefix(chunk)
        for k in chunk:
            p.on_remove(next(iter(p.victims())))
            p.on_insert(k, 1)
    return (t1 - t0) / n, (time.perf_counter() - t1) / (2 * n)


def cost(n: int, names: list[str]) -> None:
    """Policy memory per cached key after the churn (tracemalloc; key strings, which the
    index holds anyway, not counted) and time per operation (a second run, untraced)."""
    import gc
    import tracemalloc

    keys = [f"b{i}" for i in range(3 * n)]
    print(f"{n} keys cached, then {2 * n} evictions + inserts\n")
    print("| policy | B/key | of which ghost counts | insert us | evict + insert us |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        gc.collect()
        tracemalloc.start()
        p = POLICIES[name]()
        _fill_and_churn(p, keys, n)
        mem = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        ghost = getattr(getattr(p, "_ghost", None), "nbytes", lambda: 0)()
        del p
        t_ins, t_ev = _fill_and_churn(POLICIES[name](), keys, n)
        print(f"| {name} | {mem / n:.0f} | {ghost / n:.0f} | {t_ins * 1e6:.1f} | "
              f"{t_ev * 1e6:.1f} |", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", nargs="?", default=DEFAULT_TRACE)
    ap.add_argument("--splits", default="full,first,second")
    ap.add_argument("--pcts", default="2,5,10,20,50")
    ap.add_argument("--policy", action="append", help="policy[:k=v,...] (repeatable; "
                    "default: the registered default)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (the machine is shared)")
    ap.add_argument("--cost", action="store_true", help="memory and time per key instead")
    ap.add_argument("--keys", type=int, default=200_000, help="cached keys for --cost")
    args = ap.parse_args()
    for s in args.policy or []:
        parse_policy(s)
    if args.cost:
        cost(args.keys, [parse_policy(s)[0] for s in args.policy] if args.policy
             else sorted(POLICIES))
        return 0
    specs = args.policy or ["prefix-lfru"]
    splits = args.splits.split(",")
    pcts = [float(x) for x in args.pcts.split(",")]
    trace = load_trace(args.trace)
    for s in splits:
        t = split(trace, s)
        print(f"{s}: {len(t.requests)} requests, {t.blocks} blocks, {t.distinct_blocks} distinct, "
              f"bound {unbounded_hit_rate(t):.2%}")
    jobs = [(args.trace, s, p, spec) for s in splits for p in pcts for spec in ["lru", *specs]]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max(1, args.jobs)) as ex:
        res = {(s, p, spec): r for s, p, spec, r in ex.map(_point, *zip(*jobs))}
    print(f"\n{len(jobs)} simulations in {time.perf_counter() - t0:.0f} s; hit rate (x LRU)\n")
    print("| split | capacity | LRU | " + " | ".join(specs) + " |")
    print("|---|---:|---:|" + "---:|" * len(specs))
    for s in splits:
        for p in pcts:
            lru = res[(s, p, "lru")]
            cells = [f"{res[(s, p, spec)]:.2%} ({res[(s, p, spec)] / lru:.3f})" for spec in specs]
            print(f"| {s} | {p:g}% | {lru:.2%} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
