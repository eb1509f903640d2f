"""SSD tier sequential read of 4 MiB objects vs a raw read of the same file, same run.

The ceiling is a dd-style loop of preadv() calls with the same block size (one
object's size) over the same data file (O_DIRECT when the tier uses it, buffered
otherwise). Raw and tier reads alternate in groups of objects within each pass, so a
shared machine's background load hits both alike, and each reads different, cold
data. Page caches are dropped before every pass when /proc/sys/vm/drop_caches is
writable (root); otherwise the O_DIRECT passes are still cold and the buffered
ones are reported as warm.

    python bench/bench_ssd.py [--dir DIR] [--objects 256] [--size 4MiB] [--rounds 6] [--group 8] [--json]
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mooncake_store.config import parse_size  # noqa: E402
from mooncake_store.node.ssd import DATA_NAME, SSDTier  # noqa: E402


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def raw_read(fd: int, mv: memoryview, start: int, end: int) -> int:
    """dd-style: block-size preadv() calls from start to end; returns bytes read."""
    off = start
    while off < end:
        got = os.preadv(fd, [mv], off)
        if got <= 0:
            break
        off += got
    return off - start


def interleaved_round(tier: SSDTier, data: str, keys: list[bytes], size: int, group: int,
                      direct: bool, flip: int) -> tuple[float, float, float, float]:
    """One pass over the file in groups of `group` objects, alternating raw and tier groups,
    so both sides see the same background load (the machine is shared). Each side reads
    different, cold data; `flip` swaps which groups each side gets.
    Returns (raw bytes, raw seconds, tier bytes, tier seconds)."""
    fd = os.open(data, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    buf = mmap.mmap(-1, size)
    dst = bytearray(size)
    rb = rt = tb = tt = 0.0
    try:
        with memoryview(buf) as mv:
            for g in range(0, len(keys), group):
                ks = keys[g:g + group]
                if (g // group + flip) % 2 == 0:
                    first, last = tier.location(ks[0]), tier.location(ks[-1])
                    t0 = time.perf_counter()
                    rb += raw_read(fd, mv, first.offset, last.offset + last.length)
                    rt += time.perf_counter() - t0
                else:
                    t0 = time.perf_counter()
                    for k in ks:
                        tb += tier.get_into(k, dst)
                    tt += time.perf_counter() - t0
    finally:
        os.close(fd)
        buf.close()
    return rb, rt, tb, tt


def run(args) -> dict:
    size = parse_size(args.size, "size")
    root = tempfile.mkdtemp(prefix="mcs-bench-ssd-", dir=args.dir)
    out: dict = dict(objects=args.objects, object_size=size, rounds=args.rounds,
                     group=args.group, dir=root)
    try:
        cap = args.objects * (size + 8192) + (64 << 20)
        with SSDTier(root, cap, direct=None) as t:
            out["direct_supported"] = t.direct
            payload = os.urandom(size)
            for i in range(args.objects):
                t.put(f"obj{i:06d}", payload)
            t.flush()
        data = os.path.join(root, DATA_NAME)
        out["drop_caches"] = drop_caches()
        modes = [("direct", True)] if out["direct_supported"] else []
        modes.append(("buffered", False))
        for mode, direct in modes:
            with SSDTier(root, cap, direct=direct) as t:
                keys = sorted(t.keys(), key=lambda k: t.location(k).offset)
                tot = [0.0, 0.0, 0.0, 0.0]
                ratios = []
                for r in range(args.rounds):
                    drop_caches()
                    rb, rt, tb, tt = interleaved_round(t, data, keys, size, args.group, direct,
                                                       r % 2)
                    ratios.append(round((tb / tt) / (rb / rt), 3))
                    tot = [a + b for a, b in zip(tot, (rb, rt, tb, tt))]
            raw_bw, tier_bw = tot[0] / tot[1], tot[2] / tot[3]
            out[mode] = dict(raw_gbps=round(raw_bw / 1e9, 3), tier_gbps=round(tier_bw / 1e9, 3),
                             ratio=round(tier_bw / raw_bw, 3),
                             round_ratios=ratios, median_round_ratio=statistics.median(ratios),
                             cold=direct or out["drop_caches"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="where to create the tier (default: $TMPDIR)")
    ap.add_argument("--objects", type=int, default=256)
    ap.add_argument("--size", default="4MiB")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--group", type=int, default=8, help="objects per alternating group")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(args)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{res['objects']} x {res['object_size'] >> 20} MiB objects, drop_caches="
          f"{res['drop_caches']}, O_DIRECT={res['direct_supported']}")
    for mode in ("direct", "buffered"):
        if mode in res:
            m = res[mode]
            print(f"  {mode:9s} raw {m['raw_gbps']:.2f} GB/s  tier {m['tier_gbps']:.2f} GB/s  "
                  f"ratio {m['ratio']:.2f}x  ({'cold' if m['cold'] else 'warm'} cache; "
                  f"per-round ratios {m['round_ratios']})")


if __name__ == "__main__":
    main()
