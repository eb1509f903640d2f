"""Faults without a cluster: kill -9 mid-SSD-put, a transfer peer killed mid-batch,
SeaweedFS (the S3 tier) gone for ~10 s under load."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import harness
from harness import Load, report, verify

from mooncake_store import Store
from mooncake_store.errors import StoreError
from mooncake_store.node.ssd import SSDTier
from mooncake_store.transfer import TransferEngine

HERE = os.path.dirname(os.path.abspath(__file__))



def test_kill9_mid_ssd_put_never_serves_a_torn_record(tmp_path):
    """Three rounds: a writer process is killed -9 while putting; the reopened tier
    serves every record it still lists either exactly or as a clean error."""
    path = str(tmp_path / "ssd")
    served = refused = wrong = attempted = 0
    t_reopen = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([harness.ROOT, HERE]))
    for rnd in range(3):
        p = subprocess.Popen([sys.executable, os.path.join(HERE, "ssd_writer.py"), path, str(rnd * 7919)],
                             stdout=subprocess.PIPE, env=env, cwd=harness.ROOT)
        try:
            target = 200 + 137 * rnd
            for _ in range(target):          # bounded by the count; readline blocks per put
                line = p.stdout.readline()
                if not line:
                    break
            os.kill(p.pid, signal.SIGKILL)   # mid-put: it never stops writing on its own
        finally:
            p.wait(timeout=10)
            p.stdout.close()
        t0 = time.monotonic()
        tier = SSDTier(path, "64MB")
        t_reopen.append(time.monotonic() - t0)
        try:
            for k in tier.keys():
                key = k.decode()
                attempted += 1
                try:
                    data = tier.read(key)
                except StoreError:
                    refused += 1
                    continue
                gen = harness.soak.check_value(key, data, harness.MAX_KIB)
                if gen is None:
                    wrong += 1
                else:
                    served += 1
        finally:
            tier.close()
    report("kill -9 of a process writing to the SSD tier (x3), reopen", "continuous SSD puts",
           attempted, refused, wrong, 0, max(t_reopen), served=served)
    assert wrong == 0
    assert served > 0


@pytest.fixture
def target():
    spec = importlib.util.spec_from_file_location(
        "transfer_targets", os.path.join(harness.ROOT, "tests", "transfer", "targets.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    made = []

    def make():
        t = mod.Target(size=64 << 20)
        made.append(t)
        return t

    yield make
    for t in made:
        t.kill()


def test_transfer_peer_killed_mid_batch(target):
    t = target()
    base, size = t.regions["plain"]
    n, chunk = 256, 256 << 10
    src = np.random.default_rng(3).integers(0, 256, n * chunk, dtype=np.uint8)
    with TransferEngine(use_shm=False, timeout_ms=2000) as te:
        assert te.batch_transfer_sync_write(t.name, [src.ctypes.data + i * chunk for i in range(n)],
                                            [base + i * chunk for i in range(n)], [chunk] * n) == 0
        dst = np.zeros_like(src)
        # Several rounds of batches: the peer dies during one of them.
        bid = te.submit(t.name, 0, [dst[i * chunk:(i + 1) * chunk] for i in range(n)],
                        [base + i * chunk for i in range(n)], [chunk] * n)
        # Kill once part of the batch has landed (polling bounded to ~2 s).
        for _ in range(2000):
            if any(x.state == "completed" for x in te.status(bid)):
                break
            time.sleep(0.001)
        t.kill()
        t0 = time.monotonic()
        st = te.wait(bid, timeout_ms=15_000)
        waited = time.monotonic() - t0
        done = [i for i, s in enumerate(st) if s.state == "completed"]
        failed = [i for i, s in enumerate(st) if s.state != "completed"]
        wrong = sum(not np.array_equal(dst[i * chunk:(i + 1) * chunk], src[i * chunk:(i + 1) * chunk])
                    for i in done)
        assert all(s.state in ("completed", "failed") for s in st), {s.state for s in st}
        # The engine keeps working with another peer.
        t2 = target()
        b2, _ = t2.regions["plain"]
        assert te.transfer_sync_write(t2.name, src[:chunk], b2, chunk) == 0
        back = np.zeros(chunk, dtype=np.uint8)
        assert te.transfer_sync_read(t2.name, back, b2, chunk) == 0
        assert np.array_equal(back, src[:chunk])
    report("transfer peer kill -9 mid-batch", f"batch of {n} x 256 KiB reads", n, len(failed),
           wrong, 0, waited, completed=len(done))
    assert wrong == 0
    assert waited < 15


def test_s3_kill9_and_restart_under_load(seaweedfs, s3_bucket, tmp_path, monkeypatch):
    """SeaweedFS killed -9 for ~10 s under load on a DRAM -> SSD -> S3 store, then restarted
    on the same directory and ports: DRAM/SSD ops go on, nothing wrong is served, push-downs
    resume after it returns, and objects pushed down before the kill still read back."""
    monkeypatch.setenv("MOONCAKE_S3_ACCESS_KEY_ID", seaweedfs.access_key)
    monkeypatch.setenv("MOONCAKE_S3_SECRET_ACCESS_KEY", seaweedfs.secret_key)
    store = Store(capacity="4MB", enable_ssd_offload=True, ssd_offload_path=str(tmp_path / "ssd"),
                  ssd_capacity="6MB", s3_bucket=s3_bucket, s3_endpoint_url=seaweedfs.endpoint,
                  s3_region=seaweedfs.region, demote_watermark=0.6, lease_ttl_ms=50)
    load = Load(store, "s3o", keys=1500, max_s=90, ops=("put", "put", "get", "get", "exists"))
    try:
        load.start()
        time.sleep(4)
        before = dict(store.stats())
        harness.kill9(seaweedfs.proc)                 # kill -9: connections refused, not hung
        t_pause = time.monotonic()
        a0, ok0 = load.attempted, load.ok
        time.sleep(10)
        during_attempted, during_ok = load.attempted - a0, load.ok - ok0
        t_restart = time.monotonic()
        seaweedfs.start()                             # same data dir and ports
        t_back = time.monotonic()
        pd0 = store.stats()["pushed_down"]
        recovery = harness.wait_recovered(lambda: store.stats()["pushed_down"] > pd0, timeout=60)
        time.sleep(2)
        load.stop()
        acked = set(load.acked)
        after = store.stats()
        # Every acknowledged key reads back exactly, or (evicted past every tier) misses cleanly.
        missing = wrong = 0
        for k in acked:
            try:
                if not verify(k, store.get(k)):
                    wrong += 1
            except StoreError:
                missing += 1
    finally:
        if seaweedfs.proc is None or seaweedfs.proc.poll() is not None:
            seaweedfs.start()                         # the session fixture must outlive us
        if load.is_alive():
            load.stop()
        store.close()
    report("SeaweedFS (S3 tier) kill -9, restarted on its dir after 10 s",
           "put/get/exists on DRAM->SSD->S3",
           load.attempted, load.failed_clean, load.wrong + wrong, 0, recovery,
           ops_during_outage=during_attempted, ok_during_outage=during_ok,
           pushed_down=after["pushed_down"] - before["pushed_down"], acked_unreadable=missing,
           errors=load.errors, unexpected=load.unexpected[:3], outage_s=round(t_back - t_pause, 1),
           restart_s=round(t_back - t_restart, 2), recovery_from="SeaweedFS answering again")
    assert load.wrong == 0 and wrong == 0
    assert not load.unexpected, load.unexpected
    assert during_ok > 0                      # the DRAM/SSD tiers kept serving
    assert after["tiers"]["s3"]["objects"] > 0
