"""Cluster metadata throughput and master index memory.

Runs a MasterService in this process (real RPC over 127.0.0.1) with one mounted
segment that no bytes are written to, and times batched metadata calls from a
RemoteIndex client: batch_put_start + batch_put_end, batch_exists,
batch_get_replicas (keys/s). Then measures the master's memory per object
(tracemalloc over building an index of N objects). Usage:

    python bench/cluster_meta.py [--keys 200000] [--batch 1024]
"""
from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc

from mooncake_store.client.cluster import MasterClient, RemoteIndex
from mooncake_store.config import Config
from mooncake_store.master.service import MasterService


def timed(fn, keys: list[str], batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(keys), batch):
        fn(keys[i:i + batch])
    return len(keys) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1024)
    a = ap.parse_args()
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

    out["batch_put_keys_per_s"] = timed(put, keys, a.batch)
    out["batch_exists_keys_per_s"] = timed(ix.batch_exists, keys, a.batch)
    out["batch_get_replicas_keys_per_s"] = timed(ix.batch_get_replicas, keys, a.batch)
    svc.close()

    # Memory: the index alone (no RPC), N objects of one replica each.
    gc.collect()
    tracemalloc.start()
    svc2 = MasterService(cfg)
    svc2.index.add_segment("127.0.0.1:1", 64 << 30)
    base = tracemalloc.get_traced_memory()[0]
    for k in keys:
        svc2.index.put_start(k, 4096)
        svc2.index.put_end(k)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    svc2.rpc.close()
    out["index_bytes_per_object"] = used / a.keys
    out["key_bytes"] = len(keys[0])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
