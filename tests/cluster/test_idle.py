"""An idle cluster costs no CPU: no process busy-polls once the traffic stops (users of
other KV stores report threads pinning cores while idle). Real master, node and client,
the client still holding its connections, its reservation and a registered buffer."""
from __future__ import annotations

import os
import time

import numpy as np

from support.cluster import store, wait_nodes

IDLE_S = 3.0
# Measured 0.2-0.4% per process with heartbeats every 100 ms; a spinning thread is ~100%.
MAX_SHARE = 0.05


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime


def test_idle_cluster_uses_no_cpu(cluster):
    m = cluster.master()
    node = cluster.node(m.addr, dram="64MB")
    wait_nodes(m.addr, 1)
    with store(m.addr) as s:
        buf = np.arange(1 << 16, dtype=np.uint8)
        s.register_buffer(buf)
        for i in range(50):   # single puts (reservations), a batch, reads: every path warm
            s.put_from(f"idle/{i}", buf)
        assert s.batch_put([f"idle/b{i}" for i in range(8)], [b"v" * 1000] * 8) == [0] * 8
        assert s.batch_get([f"idle/{i}" for i in range(50)]) == [buf.tobytes()] * 50
        pids = {"master": m.pid, "node": node.pid, "client": os.getpid()}
        before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
        t0 = time.monotonic()
        time.sleep(IDLE_S)
        took = time.monotonic() - t0
        share = {name: (_cpu_seconds(pid) - before[name]) / took for name, pid in pids.items()}
        assert all(v < MAX_SHARE for v in share.values()), share
        assert s.get("idle/0") == buf.tobytes()   # and it still answers at once
