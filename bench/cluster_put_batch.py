"""Batch put from a segment-less client: batch_put_from vs a per-key put_from loop.

Starts a master and one node process on 127.0.0.1 (the test fixtures' launcher), then times
`batch_put_from` of 64 x 256 KiB and of 16 x 1 MiB against `put_from` key by key, in
alternating rounds so both see the same machine load. Keys are removed (untimed) after each
timed pass so the node never fills. MOONCAKE_SHM=0 forces tcp (the cross-host path).

    MOONCAKE_SHM=0 PYTHONPATH=. python bench/cluster_put_batch.py [--rounds 3] [--reps 10]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from support.cluster import Cluster, store, wait_nodes  # noqa: E402

SHAPES = ((64, 256 << 10), (16, 1 << 20))


def _timed(fn, reps: int, keys: list[str], s) -> float:
    """Seconds for `reps` passes of fn(pass number); the keys each pass wrote are removed
    between passes, outside the clock."""
    total = 0.0
    for r in range(reps):
        ks = [f"{k}/{r}" for k in keys]
        t0 = time.perf_counter()
        fn(ks)
        total += time.perf_counter() - t0
        s.batch_remove(ks, force=True)
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    c = Cluster(tempfile.mkdtemp(prefix="mcs-bench-"))
    try:
        m = c.master()
        node = c.node(m.addr, dram="512MB")
        wait_nodes(m.addr, 1)
        with store(m.addr) as s:
            print(f"transport {s._cluster.engine.transport(node.endpoint)}")
            for nkeys, size in SHAPES:
                bufs = [np.random.default_rng(i).integers(0, 255, size, dtype=np.uint8)
                        for i in range(nkeys)]
                keys = [f"p{size}/{i}" for i in range(nkeys)]
                gb = a.reps * nkeys * size / 1e9

                def batch(ks: list[str]) -> None:
                    assert s.batch_put_from(ks, bufs) == [0] * nkeys

                def per_key(ks: list[str]) -> None:
                    for k, b in zip(ks, bufs):
                        s.put_from(k, b)

                for _ in range(a.rounds):
                    tb = _timed(batch, a.reps, keys, s)
                    tk = _timed(per_key, a.reps, keys, s)
                    print(f"{nkeys} x {size >> 10} KiB: batch_put_from {gb / tb:.2f} GB/s   "
                          f"per-key put_from {gb / tk:.2f} GB/s   ratio {tk / tb:.2f}x")
    finally:
        c.close()


if __name__ == "__main__":
    main()
