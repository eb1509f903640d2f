"""Ceilings measured in the same run as the store workloads, so ratios stay honest on a noisy box.

* `memcpy_chunks`: one memcpy call per value, value-sized chunks, between a region as big as the
  store's working set (larger than the last-level cache) and one as big as the workers' buffers,
  in the direction of the phase it bounds: the same footprint the put/get phases touch.
* `memcpy_bulk`: one big numpy copy, best of N (what the Mooncake anchor reports).
* `tcp_loopback`: plain Python sockets between two processes over 127.0.0.1 (the bound for any
  remote read until a faster transport lands).
* `tcp_round_trips`: the same sockets, one value per round trip (send it, wait for an 8-byte
  answer): the bound for a lone put or get of that size, which must move the value through a
  socket and hear back before it returns, before any control message of its own.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import socket
import time

import numpy as np

from .._engine import ffi, lib
from .stats import GiB, MiB, now


def _slots(base, region_bytes: int, size: int) -> list:
    n = max(1, region_bytes // size)
    return [base + i * size for i in range(n)]


class CopyArena:
    """Buffers for `memcpy_chunks`, allocated once per run: `big` spans the store's working
    set, `small` is as large as a worker's source / destination buffer."""

    def __init__(self, big_bytes: int, small_bytes: int) -> None:
        self.big = np.ones(big_bytes, np.uint8)      # ones(): pages faulted in before timing
        self.small = np.full(small_bytes, 7, np.uint8)
        self.big_c = ffi.cast("char *", self.big.ctypes.data)
        self.small_c = ffi.cast("char *", self.small.ctypes.data)


TO_STORE, FROM_STORE = "to_store", "from_store"
# The ceiling is the best of this many equal time windows: other jobs on a shared machine
# only ever slow a copy down, so the best window is the closest to what the hardware does.
WINDOWS = 5


def memcpy_chunks(arena: CopyArena, size: int, seconds: float, direction: str,
                  max_bytes: int = 4 * GiB) -> dict:
    """GB/s of back-to-back memcpy calls of `size` bytes, in the direction a put
    (worker buffer -> working set) or a get (working set -> worker buffer) moves bytes."""
    if size > min(len(arena.big), len(arena.small)):
        raise ValueError(f"value size {size} exceeds the copy arena")
    big = _slots(arena.big_c, len(arena.big), size)
    small = _slots(arena.small_c, len(arena.small), size)
    if direction == TO_STORE:
        src, dst = small, big
    elif direction == FROM_STORE:
        src, dst = big, small
    else:
        raise ValueError(f"unknown direction {direction!r}")
    ns, nd = len(src), len(dst)
    copy = lib.mcs_copy
    i = done = 0
    best = 0.0
    t0 = now()
    deadline = t0 + seconds
    window = max(seconds / WINDOWS, 1e-3)
    while done < max_bytes and now() < deadline:
        w0, wbytes = now(), 0
        while now() - w0 < window and done + wbytes < max_bytes:
            # Check the clock every 16 calls: keeps the ceiling's own overhead small.
            for _ in range(16):
                copy(dst[i % nd], src[i % ns], size)
                i += 1
            wbytes += 16 * size
        done += wbytes
        best = max(best, wbytes / (now() - w0))
    secs = now() - t0
    return {"test": "ceiling_memcpy", "value_size": size, "direction": direction, "bytes": done,
            "calls": i, "secs": round(secs, 4), "GBps": round(best / 1e9, 3),
            "GBps_mean": round(done / secs / 1e9, 3), "windows": WINDOWS,
            "big_mib": len(arena.big) // MiB, "small_mib": len(arena.small) // MiB}


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


def _accept_one(conn) -> socket.socket:
    """Listen on 127.0.0.1, tell the parent the port over `conn`, take one connection."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    ls.settimeout(30)
    conn.send(ls.getsockname()[1])
    c, _ = ls.accept()
    ls.close()
    c.settimeout(30)
    return c


@contextlib.contextmanager
def _peer(target, *args):
    """A spawned process running target(pipe end, *args); yields (pipe, its port)."""
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    rx = ctx.Process(target=target, args=(there, *args), daemon=True)
    rx.start()
    try:
        if not here.poll(60):
            raise RuntimeError("tcp ceiling: peer process did not start")
        yield here, here.recv()
    finally:
        rx.join(10)
        if rx.is_alive():
            rx.kill()
            rx.join(5)


def _tcp_receiver(conn, chunk: int) -> None:
    c = _accept_one(conn)
    buf = memoryview(bytearray(chunk))
    total, t0, cpu0 = 0, None, time.process_time()
    while True:
        n = c.recv_into(buf)
        if n == 0:
            break
        if t0 is None:
            t0 = now()
        total += n
    c.close()
    conn.send((total, now() - t0 if t0 is not None else 0.0, time.process_time() - cpu0))


def tcp_loopback(seconds: float, chunk: int = 16 * MiB) -> dict:
    """Bytes/s of sendall -> recv_into between this process and a spawned one on 127.0.0.1."""
    with _peer(_tcp_receiver, chunk) as (here, port):
        payload = os.urandom(chunk)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            cpu0 = time.process_time()
            end = now() + seconds
            while now() < end:
                s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            cpu = time.process_time() - cpu0
        if not here.poll(60):
            raise RuntimeError("tcp ceiling: receiver did not report")
        total, secs, rx_cpu = here.recv()
    secs = max(secs, 1e-9)
    return {"test": "ceiling_tcp_loopback", "chunk": chunk, "bytes": total,
            "secs": round(secs, 3), "GBps": round(total / secs / 1e9, 3),
            "cpu_s": round(cpu + rx_cpu, 4),
            "note": "python sendall/recv_into, 2 processes, 127.0.0.1"}


def _tcp_acker(conn, size: int) -> None:
    c = _accept_one(conn)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = memoryview(bytearray(size))
    while True:
        got = 0
        while got < size:
            n = c.recv_into(buf[got:])
            if n == 0:
                c.close()
                return
            got += n
        c.sendall(b"ack-ack!")


def tcp_round_trips(size: int, seconds: float, max_ops: int = 100_000) -> dict:
    """Values/s when each value of `size` bytes is sent to a spawned process over 127.0.0.1
    and an 8-byte answer awaited before the next (bounded by `seconds` and `max_ops`)."""
    lat: list[float] = []
    with _peer(_tcp_acker, size) as (_, port):
        payload = os.urandom(size)
        ack = bytearray(8)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            end = now() + seconds
            while len(lat) < max_ops and now() < end:
                t0 = now()
                s.sendall(payload)
                got = 0
                while got < 8:
                    n = s.recv_into(memoryview(ack)[got:])
                    if n == 0:
                        raise RuntimeError("tcp round-trip ceiling: receiver went away")
                    got += n
                lat.append(now() - t0)
    secs = max(sum(lat), 1e-9)
    lat.sort()
    return {"test": "ceiling_tcp_round_trip", "value_size": size, "ops": len(lat),
            "GBps": round(len(lat) * size / secs / 1e9, 3),
            "p50_us": round(lat[len(lat) // 2] * 1e6, 1) if lat else None,
            "note": "python sendall + 8-byte answer per value, 2 processes, 127.0.0.1"}
