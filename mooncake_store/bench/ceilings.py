"""Ceilings measured in the same run as the store workloads, so ratios stay honest on a noisy box.

* `memcpy_chunks`: one memcpy call per value, value-sized chunks, cycling over a source as big as
  the store's working set and a destination as big as the workers' buffers — the same memory
  footprint the store's put/get phases touch, larger than the last-level cache.
* `memcpy_bulk`: one big numpy copy, best of N (what the Mooncake anchor reports).
* `tcp_loopback`: plain Python sockets between two processes over 127.0.0.1 (the bound for any
  remote read until a faster transport lands).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import socket

import numpy as np

from .._engine import ffi, lib
from .stats import GiB, MiB, now


def _slots(base, region_bytes: int, size: int) -> list:
    n = max(1, region_bytes // size)
    return [base + i * size for i in range(n)]


class CopyArena:
    """Source and destination buffers for `memcpy_chunks`, allocated once per run."""

    def __init__(self, src_bytes: int, dst_bytes: int) -> None:
        self.src = np.full(src_bytes, 7, np.uint8)
        self.dst = np.ones(dst_bytes, np.uint8)      # ones(): pages faulted in before timing
        self.src_c = ffi.cast("char *", self.src.ctypes.data)
        self.dst_c = ffi.cast("char *", self.dst.ctypes.data)


def memcpy_chunks(arena: CopyArena, size: int, seconds: float, max_bytes: int = 4 * GiB) -> dict:
    """GB/s of back-to-back memcpy calls of `size` bytes over the arena's footprint."""
    if size > min(len(arena.src), len(arena.dst)):
        raise ValueError(f"value size {size} exceeds the copy arena")
    sp = _slots(arena.src_c, len(arena.src), size)
    dp = _slots(arena.dst_c, len(arena.dst), size)
    ns, nd = len(sp), len(dp)
    copy = lib.mcs_copy
    i = done = 0
    t0 = now()
    deadline = t0 + seconds
    while done < max_bytes:
        # Check the clock every 16 calls: keeps the ceiling's own overhead small.
        for _ in range(16):
            copy(dp[i % nd], sp[i % ns], size)
            i += 1
        done += 16 * size
        if now() >= deadline:
            break
    secs = now() - t0
    return {"test": "ceiling_memcpy", "value_size": size, "bytes": done, "calls": i,
            "secs": round(secs, 4), "GBps": round(done / secs / 1e9, 3),
            "src_mib": len(arena.src) // MiB, "dst_mib": len(arena.dst) // MiB}


def memcpy_bulk(nbytes: int = 256 * MiB, reps: int = 5) -> dict:
    src = np.full(nbytes, 7, np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    times = []
    for _ in range(reps):
        t0 = now()
        np.copyto(dst, src)
        times.append(now() - t0)
    times.sort()
    return {"test": "ceiling_memcpy_bulk", "bytes": nbytes, "reps": reps,
            "GBps_best": round(nbytes / times[0] / 1e9, 3),
            "GBps_median": round(nbytes / times[len(times) // 2] / 1e9, 3)}


def _tcp_receiver(conn, chunk: int) -> None:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    ls.settimeout(30)
    conn.send(ls.getsockname()[1])
    c, _ = ls.accept()
    ls.close()
    c.settimeout(30)
    buf = memoryview(bytearray(chunk))
    total, t0 = 0, None
    while True:
        n = c.recv_into(buf)
        if n == 0:
            break
        if t0 is None:
            t0 = now()
        total += n
    c.close()
    conn.send((total, now() - t0 if t0 is not None else 0.0))


def tcp_loopback(seconds: float, chunk: int = 16 * MiB) -> dict:
    """Bytes/s of sendall -> recv_into between this process and a spawned one on 127.0.0.1."""
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    rx = ctx.Process(target=_tcp_receiver, args=(there, chunk), daemon=True)
    rx.start()
    try:
        if not here.poll(60):
            raise RuntimeError("tcp ceiling: receiver did not start")
        port = here.recv()
        payload = os.urandom(chunk)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            end = now() + seconds
            while now() < end:
                s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        if not here.poll(60):
            raise RuntimeError("tcp ceiling: receiver did not report")
        total, secs = here.recv()
    finally:
        rx.join(10)
        if rx.is_alive():
            rx.kill()
            rx.join(5)
    secs = max(secs, 1e-9)
    return {"test": "ceiling_tcp_loopback", "chunk": chunk, "bytes": total,
            "secs": round(secs, 3), "GBps": round(total / secs / 1e9, 3),
            "note": "python sendall/recv_into, 2 processes, 127.0.0.1"}
