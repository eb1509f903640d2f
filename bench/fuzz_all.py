"""The long fuzz run: >= 100,000 cases per boundary, then the hypothesis suites.

    python bench/fuzz_all.py                    # 100,000 mutation cases per boundary
    python bench/fuzz_all.py --cases 20000 --hypothesis 0 --json out.json

Phase 1 drives every boundary in tests/fuzz/boundaries.py with seeded random
and mutated inputs, in-process (C parsers included). Each case runs under a
1 s alarm (a case that trips it counts as a hang); the RSS growth over each
boundary's run is printed (unbounded allocation would show here). Phase 2 runs
tests/fuzz (hypothesis, plus the live transfer/RPC servers) with
MCS_FUZZ_EXAMPLES set. Exit status 1 on any failure.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tests/fuzz for the boundaries, tests/ for the support helpers they use.
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "fuzz")]

import boundaries  # noqa: E402

CASE_LIMIT_S = 1.0


class Hang(Exception):
    pass


def _alarm(*_):
    raise Hang()


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_boundary(name: str, one, cases: int) -> dict:
    rss0, t0 = rss_mib(), time.perf_counter()
    failures, hangs, slowest = [], 0, 0.0
    for _ in range(cases):
        start = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, CASE_LIMIT_S)
        try:
            one()
        except Hang:
            hangs += 1
        except Exception:  # noqa: BLE001 - every escape is a finding; keep going
            if len(failures) < 5:
                failures.append(traceback.format_exc(limit=4))
            else:
                failures.append("")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        slowest = max(slowest, time.perf_counter() - start)
    return {"boundary": name, "cases": cases, "failures": len(failures), "hangs": hangs,
            "slowest_case_ms": round(slowest * 1e3, 2), "seconds": round(time.perf_counter() - t0, 1),
            "rss_growth_mib": round(rss_mib() - rss0, 1), "tracebacks": [f for f in failures if f]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100_000, help="mutation cases per boundary")
    ap.add_argument("--hypothesis", type=int, default=2000,
                    help="MCS_FUZZ_EXAMPLES for the hypothesis suites (0: skip them)")
    ap.add_argument("--seed", type=int, default=20261124)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    signal.signal(signal.SIGALRM, _alarm)
    rng = random.Random(args.seed)
    results = []
    for name, (one, close) in boundaries.runners(rng).items():
        r = run_boundary(name, one, args.cases)
        results.append(r)
        print(f"{name:48s} {r['cases']:>8,} cases  {r['failures']} failed  {r['hangs']} hung  "
              f"slowest {r['slowest_case_ms']:.1f} ms  RSS {r['rss_growth_mib']:+.1f} MiB  "
              f"{r['seconds']:.0f} s", flush=True)
        for tb in r["tracebacks"]:
            print(tb)
        if close:
            close()
    print("known findings tolerated (see tests/fuzz/test_findings.py):")
    for what, n in sorted(boundaries.FINDINGS.items()):
        print(f"  {n:>7,}  {what}")
    ok = all(r["failures"] == 0 and r["hangs"] == 0 for r in results)
    hyp = None
    if args.hypothesis:
        env = dict(os.environ, MCS_FUZZ_EXAMPLES=str(args.hypothesis))
        env.pop("MOONCAKE_AUTH_TOKEN", None)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               os.path.join(ROOT, "tests", "fuzz")], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=1800)
        hyp = {"examples_per_test": args.hypothesis, "rc": proc.returncode,
               "seconds": round(time.perf_counter() - t0), "summary": proc.stdout.strip().splitlines()[-1]}
        print(f"hypothesis suites (tests/fuzz, {args.hypothesis} examples per test): {hyp['summary']}")
        if proc.returncode != 0:
            print(proc.stdout[-5000:])
            ok = False
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mutation": results, "findings": boundaries.FINDINGS, "hypothesis": hyp},
                      f, indent=1)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
