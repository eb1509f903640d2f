"""Batch put from a segment-less client: batch_put_from vs a per-key put_from loop.

Starts a master and one node process (--nodes N: N) on 127.0.0.1 (the test fixtures' launcher), then times
`batch_put_from` of 64 x 256 KiB and of 16 x 1 MiB against `put_from` key by key, in
alternating passes so both see the same machine load. Keys are removed (untimed) after each
timed pass so the node never fills. MOONCAKE_SHM=0 forces tcp (the cross-host path).

    MOONCAKE_SHM=0 PYTHONPATH=. python bench/cluster_put_batch.py [--rounds 3] [--reps 10] [--nodes 1]
        [--shapes 64x256K,16x1M]
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

from mooncake_store.config import parse_size  # noqa: E402

SHAPES = "64x256K,16x1M"


def _pass(fn, keys: list[str], s) -> float:
    """Seconds for one fn(keys); the keys are removed afterwards, outside the clock."""
    t0 = time.perf_counter()
    fn(keys)
    took = time.perf_counter() - t0
    s.batch_remove(keys, force=True)
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--shapes", default=SHAPES, help="batches as KEYSxSIZE, comma-separated")
    a = ap.parse_args()
    shapes = [(int(n), parse_size(v)) for n, v in (x.split("x") for x in a.shapes.split(","))]
    c = Cluster(tempfile.mkdtemp(prefix="mcs-bench-"))
    try:
        m = c.master()
        node = [c.node(m.addr, dram="512MB") for _ in range(a.nodes)][0]
        wait_nodes(m.addr, a.nodes)
        with store(m.addr) as s:
            print(f"transport {s._cluster.engine.transport(node.endpoint)}")
            for nkeys, size in shapes:
                bufs = [np.random.default_rng(i).integers(0, 255, size, dtype=np.uint8)
                        for i in range(nkeys)]
                keys = [f"p{size}/{i}" for i in range(nkeys)]
                gb = a.reps * nkeys * size / 1e9

                def batch(ks: list[str]) -> None:
                    assert s.batch_put_from(ks, bufs) == [0] * nkeys

                def per_key(ks: list[str]) -> None:
                    for k, b in zip(ks, bufs):
                        s.put_from(k, b)

                for rnd in range(a.rounds):
                    tb = tk = 0.0
                    for r in range(a.reps):   # batch and per-key passes alternate
                        tb += _pass(batch, [f"{k}/b{rnd}.{r}" for k in keys], s)
                        tk += _pass(per_key, [f"{k}/k{rnd}.{r}" for k in keys], s)
                    print(f"{nkeys} x {size >> 10} KiB: batch_put_from {gb / tb:.2f} GB/s   "
                          f"per-key put_from {gb / tk:.2f} GB/s   ratio {tk / tb:.2f}x")
    finally:
        c.close()


if __name__ == "__main__":
    main()
