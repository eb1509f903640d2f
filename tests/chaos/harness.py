"""Shared pieces of the fault-injection suite: a verifying load thread, the row each
test reports, and the cluster fixtures of tests/cluster (loaded, not copied).

Values come from bench/soak.py (derived from key and generation), so every read is
checked end to end. A row is appended (JSON line) to $MCS_CHAOS_RESULTS when set;
docs/RELIABILITY.md is filled from such a run.
"""
from __future__ import annotations

import importlib.util
import json
import os
import random
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import soak  # noqa: E402

from mooncake_store.errors import ErrorCode, StoreError  # noqa: E402

_spec = importlib.util.spec_from_file_location("cluster_fixtures",
                                               os.path.join(ROOT, "tests", "cluster", "conftest.py"))
cf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cf)

MAX_KIB = 16


def value(key: str, gen: int = 1) -> bytes:
    return soak.make_value(key, gen, MAX_KIB)


def verify(key: str, data: bytes, gen: int = 1) -> bool:
    return soak.check_value(key, data, MAX_KIB) == gen


class Load(threading.Thread):
    """put/get/exists/remove on its own keys until stopped (bounded by max_s).

    `acked` holds the keys whose put returned OK and that were not removed since:
    those must read back exactly (or, when eviction is possible, miss cleanly).
    """

    def __init__(self, store, prefix: str, keys: int = 400, put_config=None, max_s: float = 120.0,
                 seed: int = 0, ops=("put", "get", "get", "exists", "remove")) -> None:
        super().__init__(daemon=True, name=f"load-{prefix}")
        self.s, self.prefix, self.cfg, self.max_s = store, prefix, put_config, max_s
        self.keys = [f"{prefix}/{i}" for i in range(keys)]
        self.rng = random.Random(seed)
        self.ops_list = ops
        self.stop_ev = threading.Event()
        self.acked: set[str] = set()
        self.attempted = self.ok = self.failed_clean = self.wrong = self.misses = 0
        self.unexpected: list[str] = []
        self.errors: dict[str, int] = {}
        self.fail_times: list[float] = []
        self.max_op_s = 0.0
        self.slow_ops: list[tuple[float, float]] = []   # (start, seconds) of ops over 1 s
        self.lock = threading.Lock()

    def _one(self, op: str, key: str) -> None:
        if op == "put":
            self.s.put(key, value(key), self.cfg) if self.cfg else self.s.put(key, value(key))
            with self.lock:
                self.acked.add(key)
        elif op == "get":
            try:
                data = self.s.get(key)
            except StoreError as e:
                if e.code == ErrorCode.OBJECT_NOT_FOUND and key not in self.acked:
                    return
                raise
            if not verify(key, data):
                self.wrong += 1
        elif op == "exists":
            self.s.exists(key)
        elif op == "remove":
            with self.lock:
                self.acked.discard(key)   # before: a remove that fails half way may still remove
            try:
                self.s.remove(key, force=True)
            except StoreError as e:
                if e.code != ErrorCode.OBJECT_NOT_FOUND:
                    raise

    def run(self) -> None:
        t_end = time.monotonic() + self.max_s
        while not self.stop_ev.is_set() and time.monotonic() < t_end:
            op = self.rng.choice(self.ops_list)
            key = self.rng.choice(self.keys)
            self.attempted += 1
            t0 = time.monotonic()
            try:
                self._one(op, key)
                self.ok += 1
            except StoreError as e:
                self.failed_clean += 1
                self.fail_times.append(time.monotonic())
                name = ErrorCode(e.code).name
                self.errors[name] = self.errors.get(name, 0) + 1
                if e.code == ErrorCode.OBJECT_NOT_FOUND and op == "get":
                    self.misses += 1
            except Exception as e:  # noqa: BLE001 - not a clean error: a finding
                self.unexpected.append(f"{op} {key}: {type(e).__name__}: {e}"[:200])
            took = time.monotonic() - t0
            self.max_op_s = max(self.max_op_s, took)
            if took > 1.0:
                self.slow_ops.append((t0, took))
            time.sleep(0.001)

    def last_trouble_after(self, t: float) -> float:
        """Seconds from t to the end of the last failed or >1 s op after t (0: none)."""
        ends = [ft - t for ft in self.fail_times if ft >= t]
        ends += [st + d - t for st, d in self.slow_ops if st + d >= t]
        return max(ends, default=0.0)

    def stop(self) -> None:
        self.stop_ev.set()
        self.join(timeout=60)
        assert not self.is_alive(), "load thread did not stop"


def lost(store, keys) -> list[str]:
    """Keys that do not read back exactly (missing or wrong)."""
    out = []
    for k in sorted(keys):
        try:
            if not verify(k, store.get(k)):
                out.append(f"{k} (wrong bytes)")
        except StoreError as e:
            out.append(f"{k} ({ErrorCode(e.code).name})")
    return out


def wait_recovered(pred, timeout: float, step: float = 0.1) -> float:
    """Seconds until pred() holds (bounded); raises AssertionError on timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if pred():
                return time.monotonic() - t0
        except StoreError:
            pass
        time.sleep(step)
    raise AssertionError(f"not recovered within {timeout} s")


def report(fault: str, load: str, attempted: int, failed_clean: int, wrong: int, lost_n: int,
           recovery_s: float | None, **extra) -> dict:
    row = {"fault": fault, "load": load, "attempted": attempted, "failed_clean": failed_clean,
           "wrong_bytes": wrong, "objects_lost": lost_n,
           "recovery_s": None if recovery_s is None else round(recovery_s, 2), **extra}
    print("CHAOS", json.dumps(row))
    path = os.environ.get("MCS_CHAOS_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def kill9(proc) -> None:
    """kill -9 a subprocess.Popen we started, and reap it."""
    import signal
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def restart_etcd(etcd, timeout: float = 60.0) -> float:
    """Start etcd again with the same command line (same data dir and ports) after a
    kill -9; returns the seconds until it reports healthy."""
    import subprocess
    from mooncake_store.meta.etcd import EtcdClient
    t0 = time.monotonic()
    etcd.p = subprocess.Popen(etcd.p.args, stdout=etcd.log, stderr=etcd.log)
    client = EtcdClient(etcd.endpoint, timeout_s=1.0)
    for _ in range(int(timeout / 0.1)):
        if client.healthy():
            return time.monotonic() - t0
        if etcd.p.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"etcd did not come back on its data dir (exit {etcd.p.poll()})")
