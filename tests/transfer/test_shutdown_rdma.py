"""Clean shutdown (no threads, mappings or descriptors left) and RDMA discovery."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from mooncake_store.transfer import TransferEngine, engine as engine_mod, rdma_probe


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _memfd_maps() -> int:
    with open("/proc/self/maps") as f:
        return sum("memfd:" in line for line in f)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_close_leaves_nothing_behind(shared_target):
    base_threads, base_maps, base_fds = _threads(), _memfd_maps(), _fds()
    server = TransferEngine("127.0.0.1")
    client = TransferEngine(streams=3)
    region = np.zeros(1 << 20, np.uint8)
    server.register_memory(region.ctypes.data, region.nbytes)
    managed = server.allocate_managed_buffer(1 << 20)
    out = np.zeros(1 << 20, np.uint8)
    for peer, addr in ((server.get_local_hostname(), region.ctypes.data),
                       (server.get_local_hostname(), managed),
                       (shared_target.name, shared_target.regions["memfd"][0]),
                       (shared_target.name, shared_target.regions["plain"][0])):
        assert client.transfer_sync_read(peer, out, addr, out.nbytes) == 0
    assert client.stats()["shm_mappings"] >= 1
    assert _threads() > base_threads and _memfd_maps() > base_maps
    client.close()
    server.close()
    assert _threads() == base_threads
    assert _memfd_maps() == base_maps
    assert _fds() == base_fds


def test_idle_engine_threads_sleep(shared_target):
    """Idle stream/server threads block (state S), none spins (state R)."""
    with TransferEngine("127.0.0.1") as te:
        te.connect(shared_target.name)
        import time
        time.sleep(0.2)
        me = os.getpid()
        busy = []
        for tid in os.listdir(f"/proc/{me}/task"):
            if int(tid) == me:
                continue
            with open(f"/proc/{me}/task/{tid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            busy.append(state)
        assert busy and all(s in "SD" for s in busy), busy


def test_rdma_discovery_falls_back_to_tcp_once(monkeypatch, caplog, shared_target):
    n, why = rdma_probe()
    if n > 0:
        pytest.skip(f"this host has RDMA devices ({why})")
    assert why  # a reason is always given
    monkeypatch.setattr(engine_mod, "_rdma_logged", False)
    with caplog.at_level(logging.WARNING, logger="mooncake_store.transfer"):
        engines = [TransferEngine("127.0.0.1", protocol="rdma") for _ in range(3)]
    try:
        msgs = [r.getMessage() for r in caplog.records if "RDMA" in r.getMessage()]
        assert len(msgs) == 1 and msgs[0].startswith("no RDMA device; using tcp")
        assert all(e.protocol == "tcp" for e in engines)
        base, _ = shared_target.regions["plain"]
        assert engines[0].transfer_sync_read(shared_target.name, np.zeros(8, np.uint8), base, 8) == 0
    finally:
        for e in engines:
            e.close()
