"""Cluster metadata throughput and master index memory.

Throughput (default): runs a MasterService in this process (real RPC over
127.0.0.1) with one mounted segment that no bytes are written to, and times
batched metadata calls from a RemoteIndex client: batch_put_start +
batch_put_end, batch_exists, batch_get_replicas (keys/s, one batch per call).

Memory (--memory): fills an ObjectIndex with N objects (default 1,000,000) of
one replica each, keys of 20-40 bytes, and reports bytes per object: tracemalloc
over the index structures (keys made beforehand), split into the eviction
policy's share and the rest; the key text itself (sys.getsizeof of the key
strings, which the index, its objects and the policy's queues share: one copy);
their sum, the figure the <= 300 B/object target is held to; the same sum after
one batched read of every key with its key strings made anew (as RPC decodes
them); and the RSS growth of a fill that makes its keys as it goes (what a
master process pays, allocator rounding and fragmentation included).

Churn (--churn): an index sized for N objects (default 200,000) is filled, then
takes 2N more puts, each of which has to evict: microseconds of CPU time per
put (CPU, not wall time: steadier on a shared host), so a change of the
policy's structures shows what it costs in eviction scans.
Usage:

    python bench/cluster_meta.py [--keys 200000] [--batch 1024]
    python bench/cluster_meta.py --memory [--objects 1000000] [--policy prefix-lfru] [--chain 16]
    python bench/cluster_meta.py --churn [--objects 200000] [--eviction-ratio 0.05]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import tracemalloc

from mooncake_store.client.cluster import MasterClient, RemoteIndex
from mooncake_store.config import Config
from mooncake_store.master.index import ObjectIndex
from mooncake_store.master.service import MasterService


def timed(fn, keys: list[str], batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(keys), batch):
        fn(keys[i:i + batch])
    return len(keys) / (time.perf_counter() - t0)


def throughput(a: argparse.Namespace) -> dict:
    cfg = Config(global_segment_size=0, lease_ttl_ms=0, high_watermark=1.0)
    svc = MasterService(cfg).start()
    svc.index.add_segment("127.0.0.1:1", 64 << 30)
    ix = RemoteIndex(MasterClient(svc.address, 30_000))
    keys = [f"model/layer/{i:09d}" for i in range(a.keys)]
    sizes = [4096] * a.batch
    out = {"keys": a.keys, "batch": a.batch}

    def put(chunk):
        ix.batch_put_start(chunk, sizes[:len(chunk)])
        ix.batch_put_end(chunk)

    try:
        out["batch_put_keys_per_s"] = timed(put, keys, a.batch)
        out["batch_exists_keys_per_s"] = timed(ix.batch_exists, keys, a.batch)
        out["batch_get_replicas_keys_per_s"] = timed(ix.batch_get_replicas, keys, a.batch)
    finally:
        svc.close()
    return out


def key_of(i: int) -> str:
    """20-40 byte keys shaped like KV-cache block ids (tenant / hash-ish / block)."""
    return f"t{i % 97:02d}/{(i * 2654435761) % (1 << 32):08x}/{i:0{7 + i % 21}d}"


def _fill(ix: ObjectIndex, keys, chain: int = 0) -> None:
    """Put every key; with `chain`, in requests of that many keys, each looked up first with
    longest_prefix as a serving client does (the prefix policies learn requests from it)."""
    if not chain:
        for k in keys:
            ix.put_start(k, 4096)
            ix.put_end(k)
        return
    keys = iter(keys)
    while True:
        req = [k for _, k in zip(range(chain), keys)]
        if not req:
            return
        ix.longest_prefix(req)
        for k in req:
            ix.put_start(k, 4096)
            ix.put_end(k)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory(a: argparse.Namespace) -> dict:
    n = a.objects
    cfg = Config(global_segment_size=0, lease_ttl_ms=0, high_watermark=1.0,
                 eviction_policy=a.policy)
    out: dict = {"objects": n, "policy": a.policy, "replica_num": 1, "chain": a.chain}

    # 1. RSS growth of a fill that creates its keys on the way (key text included).
    gc.collect()
    rss0 = _rss()
    ix = ObjectIndex(cfg)
    ix.add_segment("10.0.0.1:7000", 1 << 40)
    _fill(ix, (key_of(i) for i in range(n)), a.chain)
    gc.collect()
    out["rss_bytes_per_object_with_keys"] = (_rss() - rss0) / n
    del ix
    gc.collect()

    # 2. tracemalloc over the structures alone (keys made beforehand), split by module.
    keys = [key_of(i) for i in range(n)]
    out["key_len_min_max"] = [min(map(len, keys)), max(map(len, keys))]
    out["key_text_bytes_per_object"] = sum(map(sys.getsizeof, keys)) / n
    tracemalloc.start()
    ix = ObjectIndex(cfg)
    ix.add_segment("10.0.0.1:7000", 1 << 40)
    base = tracemalloc.get_traced_memory()[0]
    _fill(ix, keys, a.chain)
    total = tracemalloc.get_traced_memory()[0] - base
    snap = tracemalloc.take_snapshot()
    # 3. Then one batched read of every key, each batch's keys made anew as an RPC decodes
    #    them: what the structures hold on to afterwards (a copy of a reader's key string
    #    kept by the policy would show here as a second copy of the key text).
    for i in range(0, n, 1024):
        ix.batch_get_packed([key_of(j) for j in range(i, min(i + 1024, n))])
    gc.collect()
    after_reads = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    policy = sum(st.size for st in snap.statistics("filename")
                 if st.traceback[0].filename.endswith((os.path.join("master", "policy.py"),
                                                       os.path.join("master", "policy_prune.py"))))
    out["index_bytes_per_object"] = total / n
    out["policy_bytes_per_object"] = policy / n
    out["index_without_policy_bytes_per_object"] = (total - policy) / n
    out["index_with_key_text_bytes_per_object"] = total / n + out["key_text_bytes_per_object"]
    out["after_reads_with_key_text_bytes_per_object"] = (after_reads / n
                                                         + out["key_text_bytes_per_object"])
    return out


def churn(a: argparse.Namespace) -> dict:
    """Puts that each evict: the policy's victim scans on the hot path of a full index."""
    n = a.objects
    cfg = Config(global_segment_size=0, lease_ttl_ms=0, high_watermark=1.0,
                 eviction_ratio=a.eviction_ratio, eviction_policy=a.policy)
    keys = [key_of(i) for i in range(3 * n)]
    record = 8192                # header + 4 KiB value, rounded up: one slot per record
    ix = ObjectIndex(cfg)
    ix.add_segment("10.0.0.1:7000", n * record, align=record)
    t0 = time.process_time()
    _fill(ix, keys[:n])
    t1 = time.process_time()
    for j in range(n, 3 * n, 16):     # requests of 16 keys: a read of the previous, then puts
        ix.batch_get_replicas(keys[j - 16:j])
        _fill(ix, keys[j:j + 16])
    t2 = time.process_time()
    return {"objects": n, "policy": a.policy, "eviction_ratio": a.eviction_ratio,
            "evictions": ix.counters["evictions"],
            "fill_us_per_put": (t1 - t0) / n * 1e6,
            "churn_us_per_put_with_eviction": (t2 - t1) / (2 * n) * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--memory", action="store_true", help="measure index memory instead")
    ap.add_argument("--churn", action="store_true", help="time puts that evict instead")
    ap.add_argument("--objects", type=int, default=None,
                    help="objects (default 1,000,000 for --memory, 200,000 for --churn)")
    ap.add_argument("--policy", default="prefix-lfru")
    ap.add_argument("--chain", type=int, default=16,
                    help="--memory: keys per request, each looked up with longest_prefix first "
                         "(0: plain puts)")
    ap.add_argument("--eviction-ratio", type=float, default=1e-9,
                    help="--churn: share of capacity one eviction frees (default: only what "
                         "the put needs, so every put scans for a victim)")
    a = ap.parse_args()
    if a.objects is None:
        a.objects = 200_000 if a.churn else 1_000_000
    print(json.dumps(memory(a) if a.memory else churn(a) if a.churn else throughput(a)))


if __name__ == "__main__":
    main()
