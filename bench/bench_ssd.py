"""SSD tier sequential read of 4 MiB objects vs a raw read of the same file, same run.

The ceiling is a dd-style loop of preadv() calls with the same block size (one
object's size) over the same data file (O_DIRECT when the tier uses it, buffered
otherwise). Raw and tier reads alternate in groups of objects within each pass, so a
shared machine's background load hits both alike, and each reads different, cold
data. Page caches are dropped before every pass when /proc/sys/vm/drop_caches is
writable (root); otherwise the O_DIRECT passes are still cold and the buffered
ones are reported as warm.

    python bench/bench_ssd.py [--dir DIR] [--objects 256] [--size 4MiB] [--rounds 6]
                              [--group 4] [--json]
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

from mooncake_store._engine import ffi, lib  # noqa: E402
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


SIDES = ("raw", "tier", "raw_copy")


def interleaved_round(tier: SSDTier, data: str, keys: list[bytes], size: int, group: int,
                      direct: bool, shift: int) -> dict[str, list[float]]:
    """One pass over the file in groups of `group` objects, the sides taking turns by
    group so they see the same background load (the machine is shared); each side reads
    different, cold data, and `shift` rotates who gets which groups.
      raw:      dd-style: one preadv of `size` bytes at each record's offset (the ceiling)
      tier:     SSDTier.get_into (read, verify header, copy + CRC32C into the destination)
      raw_copy: the raw read plus the fused copy+CRC32C alone (what verification costs)
    Returns {side: [bytes, seconds]}."""
    fd = os.open(data, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    buf = mmap.mmap(-1, size + 8192)
    src = ffi.from_buffer(buf)
    dst = bytearray(size)
    pdst = ffi.from_buffer(dst)
    acc = {side: [0.0, 0.0] for side in SIDES}
    try:
        with memoryview(buf) as mv:
            for g in range(0, len(keys), group):
                side = SIDES[(g // group + shift) % len(SIDES)]
                locs = [tier.location(k) for k in keys[g:g + group]]
                t0 = time.perf_counter()
                if side == "raw":
                    n = sum(os.preadv(fd, [mv[:size]], loc.offset) for loc in locs)
                elif side == "tier":
                    n = sum(tier.get_into(k, dst) for k in keys[g:g + group])
                else:
                    n = 0
                    for loc in locs:
                        os.preadv(fd, [mv[:(loc.length + 4095) // 4096 * 4096]], loc.offset)
                        lib.mcs_copy_crc32c(pdst, src + (loc.length - size), size, 0)
                        n += size
                acc[side][0] += n
                acc[side][1] += time.perf_counter() - t0
    finally:
        os.close(fd)
        del src
        buf.close()
    return acc


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
                tot = {side: [0.0, 0.0] for side in SIDES}
                ratios = []
                for r in range(args.rounds):
                    drop_caches()
                    acc = interleaved_round(t, data, keys, size, args.group, direct, r)
                    bw = {side: b / s for side, (b, s) in acc.items() if s > 0}
                    ratios.append(round(bw["tier"] / bw["raw"], 3))
                    for side in SIDES:
                        tot[side][0] += acc[side][0]
                        tot[side][1] += acc[side][1]
            bw = {side: b / s for side, (b, s) in tot.items()}
            out[mode] = dict(raw_gbps=round(bw["raw"] / 1e9, 3),
                             tier_gbps=round(bw["tier"] / 1e9, 3),
                             raw_copy_gbps=round(bw["raw_copy"] / 1e9, 3),
                             ratio=round(bw["tier"] / bw["raw"], 3),
                             raw_copy_ratio=round(bw["raw_copy"] / bw["raw"], 3),
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
    ap.add_argument("--group", type=int, default=4, help="objects per alternating group")
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
                  f"ratio {m['ratio']:.2f}x  (raw + copy/CRC {m['raw_copy_gbps']:.2f} GB/s = "
                  f"{m['raw_copy_ratio']:.2f}x; {'cold' if m['cold'] else 'warm'} cache; "
                  f"per-round ratios {m['round_ratios']})")


if __name__ == "__main__":
    main()
