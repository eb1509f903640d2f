"""Batch get of 64 x 256 KiB from one node: one transfer batch per node vs a per-key loop.

Starts a master and one node process on 127.0.0.1 (the test fixtures' launcher),
puts 64 values, then times `batch_get_into` against `get_into` key by key, in
alternating rounds so both see the same machine load. MOONCAKE_SHM=0 forces tcp.
Besides wall-clock rates it prints the CPU time per batch of this process (all its
threads) and of the node: on a shared machine those move far less than the rates.

    PYTHONPATH=. python bench/cluster_batch.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "cluster"))
from conftest import Cluster, store, wait_nodes  # noqa: E402

KEYS, SIZE, REPS = 64, 256 << 10, 30


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) of this process, or of process `pid`."""
    if pid is None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    c = Cluster(tempfile.mkdtemp(prefix="mcs-bench-"))
    try:
        m = c.master()
        node_proc = c.node(m.addr, dram="128MB")
        wait_nodes(m.addr, 1)
        with store(m.addr) as s:
            keys = [f"k{i}" for i in range(KEYS)]
            s.batch_put(keys, [np.random.default_rng(i).bytes(SIZE) for i in range(KEYS)])
            bufs = [np.empty(SIZE, dtype=np.uint8) for _ in range(KEYS)]
            node = s._index.stat(keys[0])["replicas"][0][0]["endpoint"]
            print(f"transport {s._cluster.engine.transport(node)}")
            gb = REPS * KEYS * SIZE / 1e9
            for _ in range(a.rounds):
                c0, n0, t0 = cpu_s(), cpu_s(node_proc.pid), time.perf_counter()
                for _ in range(REPS):
                    assert s.batch_get_into(keys, bufs) == [SIZE] * KEYS
                tb = time.perf_counter() - t0
                cb, nb = (cpu_s() - c0) / REPS * 1e3, (cpu_s(node_proc.pid) - n0) / REPS * 1e3
                t0 = time.perf_counter()
                for _ in range(REPS):
                    for k, b in zip(keys, bufs):
                        s.get_into(k, b)
                tk = time.perf_counter() - t0
                print(f"batch_get_into {gb / tb:.2f} GB/s (cpu per batch: client {cb:.1f} ms, "
                      f"node {nb:.1f} ms)   per-key get_into {gb / tk:.2f} GB/s   "
                      f"ratio {tk / tb:.2f}x")
    finally:
        c.close()


if __name__ == "__main__":
    main()
