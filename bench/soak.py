"""Soak: a mixed workload for N minutes, every read verified, resources sampled.

    python bench/soak.py --minutes 10                 # embedded store + SSD tier
    python bench/soak.py --seconds 20 --json out.json
    python bench/soak.py --minutes 5 --cluster        # master + 3 node processes
    python bench/soak.py --minutes 5 --cluster --ssd 256MB   # ... each node with an SSD tier

Each worker thread owns its own keys (so it knows exactly which versions of a
key may legally be read back) and also reads a shared hot set. Values are
derived from (key, generation): a 16-byte tag (magic, generation, seed) then
bytes computed from the seed, so every read is checked end to end - wrong
bytes, a wrong key's bytes, a stale version after an upsert, or a removed key
coming back all count as `wrong`. DRAM is small against the key space, so
eviction and demotion to the SSD tier run all the time (in cluster mode the
nodes get `--ssd` unless --ssd is 0, and the master demotes to them). RSS, open fds and
threads are sampled after a warm-up and at the end; growth beyond the stated
bounds fails the run (exit 1), as do any wrong bytes.
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import random
import sys
import tempfile
import threading
import time
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mooncake_store import Store  # noqa: E402
from mooncake_store.errors import ErrorCode, StoreError  # noqa: E402

TAG = np.dtype([("magic", "<u4"), ("gen", "<u4"), ("seed", "<u8")])
MAGIC = 0x4B414F53  # "SOAK"
RSS_BOUND_MIB = 64      # growth allowed between the post-warm-up sample and the end
FD_BOUND = 16
THREAD_BOUND = 4


class LogCounter(logging.Handler):
    """Counts warnings/errors the store logs during the run (by message shape)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: collections.Counter = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.levelname} {record.name}: {record.msg}"[:100]] += 1


def seed_of(key: str, gen: int) -> int:
    return (zlib.crc32(key.encode()) << 32) | (gen * 2654435761 & 0xFFFFFFFF)


def size_of(seed: int, max_kib: int) -> int:
    return 1024 * (1 + seed % max_kib)


def make_value(key: str, gen: int, max_kib: int) -> bytes:
    seed = seed_of(key, gen)
    n = size_of(seed, max_kib)
    body = (np.arange((n - 16) // 8, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64(seed)
    tag = np.array([(MAGIC, gen, seed)], dtype=TAG)
    return tag.tobytes() + body.tobytes()


def check_value(key: str, data: bytes, max_kib: int) -> int | None:
    """The generation `data` holds when it is exactly make_value(key, gen); else None."""
    if len(data) < 16:
        return None
    tag = np.frombuffer(data[:16], dtype=TAG)[0]
    gen = int(tag["gen"])
    if int(tag["magic"]) != MAGIC or int(tag["seed"]) != seed_of(key, gen):
        return None
    return gen if data == make_value(key, gen, max_kib) else None


def resources(pid: int | str = "self") -> dict:
    with open(f"/proc/{pid}/status") as f:
        st = dict(line.split(":", 1) for line in f)
    return {"rss_mib": round(int(st["VmRSS"].split()[0]) / 1024, 1),
            "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": int(st["Threads"])}


class Worker(threading.Thread):
    WEIGHTS = {"get": 30, "get_into": 10, "put": 15, "upsert": 10, "exists": 15, "remove": 6,
               "batch_get": 7, "hot_get": 7}

    def __init__(self, store: Store, tid: int, keys: int, max_kib: int, stop: threading.Event,
                 hot: list[str]) -> None:
        super().__init__(name=f"soak-{tid}", daemon=True)
        self.s, self.tid, self.max_kib, self.stop, self.hot = store, tid, max_kib, stop, hot
        self.keys = [f"soak/{tid}/{i}" for i in range(keys)]
        self.valid: dict[str, set[int]] = collections.defaultdict(set)  # gens a read may return
        self.next_gen: dict[str, int] = collections.defaultdict(lambda: 1)
        self.rng = random.Random(tid)
        self.ops = collections.Counter()
        self.errors = collections.Counter()
        self.misses = 0
        self.wrong = 0
        self.wrong_examples: list[str] = []
        self.buf = np.empty(max_kib * 1024 + 64, dtype=np.uint8)
        names = list(self.WEIGHTS)
        self.choices = self.rng.choices(names, weights=[self.WEIGHTS[n] for n in names], k=4096)

    def _bad(self, key: str, why: str) -> None:
        self.wrong += 1
        if len(self.wrong_examples) < 5:
            self.wrong_examples.append(f"{key}: {why}")

    def _verify(self, key: str, data: bytes | None) -> None:
        if data is None:
            self.misses += 1     # evicted (or removed): a clean miss
            return
        gen = check_value(key, data, self.max_kib)
        if gen is None:
            self._bad(key, f"bytes are not a value of this key ({len(data)} B)")
        elif gen not in self.valid[key]:
            self._bad(key, f"generation {gen} read, allowed {sorted(self.valid[key])}")
        else:
            self.valid[key] = {gen}  # the store holds one version; it is this one now

    def step(self, op: str) -> None:
        key = self.rng.choice(self.keys)
        s = self.s
        if op == "get":
            try:
                self._verify(key, s.get(key))
            except StoreError as e:
                if e.code != ErrorCode.OBJECT_NOT_FOUND:
                    raise
                self.misses += 1
        elif op == "get_into":
            try:
                n = s.get_into(key, self.buf)
                self._verify(key, self.buf[:n].tobytes())
            except StoreError as e:
                if e.code != ErrorCode.OBJECT_NOT_FOUND:
                    raise
                self.misses += 1
        elif op in ("put", "upsert"):
            gen = self.next_gen[key]
            self.next_gen[key] = gen + 1
            value = make_value(key, gen, self.max_kib)
            if op == "put":
                self.valid[key].add(gen)   # kept old value, or this one
                s.put(key, value)
            else:
                old = set(self.valid[key])
                self.valid[key] |= {gen}
                s.upsert(key, value)
                self.valid[key] = {gen}
                del old
        elif op == "exists":
            s.exists(key)
        elif op == "remove":
            try:
                s.remove(key)
                self.valid[key] = set()
            except StoreError as e:
                if e.code != ErrorCode.OBJECT_NOT_FOUND:
                    raise
        elif op == "batch_get":
            ks = self.rng.sample(self.keys, 8)
            for k, v in zip(ks, s.batch_get(ks)):
                self._verify(k, v)
        elif op == "hot_get":
            key = self.rng.choice(self.hot)
            try:
                data = s.get(key)
                if check_value(key, data, self.max_kib) != 1:
                    self._bad(key, "hot key bytes wrong")
            except StoreError as e:
                if e.code != ErrorCode.OBJECT_NOT_FOUND:
                    raise
                self.misses += 1

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            op = self.choices[i % len(self.choices)]
            i += 1
            self.ops[op] += 1
            try:
                self.step(op)
            except StoreError as e:
                self.errors[ErrorCode(e.code).name] += 1
            except Exception as e:  # noqa: BLE001 - an unexpected exception type is a finding
                self.errors[f"unexpected {type(e).__name__}: {e}"[:120]] += 1


def open_store(args, tmp: str):
    if args.cluster:
        return ClusterHarness(args, tmp)
    store = Store(capacity=args.dram, enable_ssd_offload=True, ssd_offload_path=os.path.join(tmp, "ssd"),
                  ssd_capacity=args.ssd, lease_ttl_ms=50, demote_watermark=0.7)
    return _Embedded(store)


class _Embedded:
    def __init__(self, store: Store) -> None:
        self.store = store

    def close(self) -> None:
        self.store.close()

    def server_resources(self) -> dict:
        return {}

    def describe(self) -> dict:
        return {"mode": "embedded", "stats": self.store.stats()}


class ClusterHarness:
    """Master + 3 node processes on 127.0.0.1 (tests/cluster fixtures), one client Store."""

    def __init__(self, args, tmp: str) -> None:
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "cluster_fixtures", os.path.join(ROOT, "tests", "cluster", "conftest.py"))
        cf = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(cf)
        self.cluster = cf.Cluster(tmp)
        try:
            m = self.cluster.master()
            self.ssd = args.ssd not in ("", "0")
            for i in range(3):
                extra = ["--ssd", f"{os.path.join(tmp, f'ssd{i}')}:{args.ssd}"] if self.ssd else []
                self.cluster.node(m.addr, *extra, dram=args.dram)
            self.store = Store(master=m.addr, global_segment_size=0, rpc_timeout_ms=5000)
            cf.wait_until(lambda: len(self.store.stats()["nodes"]) == 3, what="3 nodes")
            self.names = {p.pid: p.name for p in self.cluster.procs}
        except BaseException:
            self.cluster.close()
            raise

    def server_resources(self) -> dict:
        return {name: resources(pid) for pid, name in self.names.items()}

    def close(self) -> None:
        try:
            self.store.close()
        finally:
            self.cluster.close()

    def describe(self) -> dict:
        st = self.store.stats()
        cold = st.get("cold", {})
        return {"mode": "cluster (master + 3 nodes" + (" with SSD tiers)" if self.ssd else ")"),
                "nodes": len(st.get("nodes", [])), "objects": st.get("objects"),
                "stats": {k: st.get(k, 0) for k in ("evictions", "cold_hits", "put_room_waits",
                                                    "cold_reads", "cold_read_failures")},
                "tiers": {k: cold.get(k, 0) for k in ("demotions", "demote_failures", "promotions",
                                                      "promote_failures", "cold_moves",
                                                      "cold_drops", "cold_lost", "forgets")},
                "tier_usage": {n: v["tiers"] for n, v in cold.get("nodes", {}).items()}}


def run(args) -> dict:
    tmp = tempfile.mkdtemp(prefix="mcs-soak-")
    logs = LogCounter()
    root = logging.getLogger("mooncake_store")
    root.addHandler(logs)
    root.propagate = False
    harness = open_store(args, tmp)
    store = harness.store
    res0 = resources()
    hot = [f"hot/{i}" for i in range(32)]
    for k in hot:
        store.upsert(k, make_value(k, 1, args.max_kib))
    stop = threading.Event()
    workers = [Worker(store, t, args.keys, args.max_kib, stop, hot) for t in range(args.threads)]
    t0 = time.monotonic()
    for w in workers:
        w.start()
    duration = args.seconds or args.minutes * 60
    warm = min(max(duration * 0.1, 2.0), 60.0)
    time.sleep(warm)
    res_warm = resources()
    srv_warm = harness.server_resources()
    samples = [dict(t=round(time.monotonic() - t0), **res_warm)]
    deadline = t0 + duration
    while time.monotonic() < deadline:
        time.sleep(min(30.0, max(0.0, deadline - time.monotonic())))
        samples.append(dict(t=round(time.monotonic() - t0), **resources()))
        if args.progress:
            ops = sum(sum(w.ops.values()) for w in workers)
            print(f"  t={samples[-1]['t']}s ops={ops:,} wrong={sum(w.wrong for w in workers)} "
                  f"{samples[-1]}", flush=True)
    stop.set()
    for w in workers:
        w.join(timeout=60)
    root.removeHandler(logs)
    root.propagate = True
    elapsed = time.monotonic() - t0
    res_end = resources()
    srv_end = harness.server_resources()
    desc = harness.describe()
    harness.close()
    res_closed = resources()
    ops = collections.Counter()
    errors = collections.Counter()
    for w in workers:
        ops.update(w.ops)
        errors.update(w.errors)
    total = sum(ops.values())
    out = {
        "mode": desc["mode"], "seconds": round(elapsed, 1), "threads": args.threads,
        "keys": args.keys * args.threads + len(hot), "dram": args.dram,
        "ops": total, "ops_per_s": round(total / elapsed), "ops_by_kind": dict(ops),
        "errors_by_code": dict(errors), "misses": sum(w.misses for w in workers),
        "wrong_bytes": sum(w.wrong for w in workers), "log_warnings": dict(logs.counts),
        "wrong_examples": [e for w in workers for e in w.wrong_examples][:10],
        "resources": {"start": res0, "after_warmup": res_warm, "end": res_end, "after_close": res_closed},
        "server_resources": {"after_warmup": srv_warm, "end": srv_end},
        "samples": samples, "store": desc,
        "bounds": {"rss_growth_mib": RSS_BOUND_MIB, "fd_growth": FD_BOUND, "thread_growth": THREAD_BOUND},
    }
    growth = {"rss_mib": res_end["rss_mib"] - res_warm["rss_mib"],
              "fds": res_end["fds"] - res_warm["fds"], "threads": res_end["threads"] - res_warm["threads"]}
    out["growth_after_warmup"] = growth
    srv_ok = True
    for name, r in srv_end.items():
        w = srv_warm[name]
        g = {k: round(r[k] - w[k], 1) for k in r}
        out.setdefault("server_growth_after_warmup", {})[name] = g
        srv_ok &= g["rss_mib"] <= RSS_BOUND_MIB and g["fds"] <= FD_BOUND and g["threads"] <= THREAD_BOUND
    out["ok"] = (out["wrong_bytes"] == 0 and growth["rss_mib"] <= RSS_BOUND_MIB
                 and growth["fds"] <= FD_BOUND and growth["threads"] <= THREAD_BOUND and srv_ok
                 and not any(k.startswith("unexpected") for k in errors))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=0.0, help="overrides --minutes")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--keys", type=int, default=2000, help="keys owned by each thread")
    ap.add_argument("--max-kib", type=int, default=32, help="values are 1..N KiB")
    ap.add_argument("--dram", default="32MB")
    ap.add_argument("--ssd", default="256MB", help="SSD tier size (per node with --cluster; "
                    "0: none)")
    ap.add_argument("--cluster", action="store_true", help="master + 3 node processes")
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    out = run(args)
    text = json.dumps(out, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    summary = {k: out[k] for k in ("mode", "seconds", "ops", "ops_per_s", "errors_by_code", "misses",
                                   "wrong_bytes", "log_warnings", "growth_after_warmup",
                                   "server_growth_after_warmup", "ok") if k in out}
    if "tiers" in out["store"]:
        summary["tiers"] = out["store"]["tiers"]
    print(json.dumps(summary, indent=1))
    print("resources:", json.dumps(out["resources"]))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
