"""`mstore bench transfer`: throughput of the transfer engine, next to raw ceilings.

Modes (like Mooncake's transfer_engine_bench):
  target     serve a registered memfd buffer and print one JSON line {port, addr, size}
  initiator  move --block-size blocks in batches of --batch-size to/from a target
  local      (default) spawn a target process on 127.0.0.1, run the initiator for each
             block size and operation, and measure the ceilings in the same run: a plain
             Python socket pair in two processes (tcp) and memcpy of the same blocks (shm).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Optional

import numpy as np
import typer

from .._engine import ffi, lib
from ..errors import StoreError
from ..transfer import READ, WRITE, TransferEngine

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
now = time.perf_counter
# (block size, batch size) points; the same as the Mooncake anchor's teb.sh.
DEFAULT_POINTS = "4K:128,64K:128,1M:128,4M:32,16M:8"


def _size(text: str) -> int:
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": KiB, "M": MiB, "G": GiB}.get(t[-1:], 1)
    num = t[:-1] if t[-1:] in "KMG" else t
    try:
        n = int(float(num) * mult)
    except ValueError:
        raise typer.BadParameter(f"bad size {text!r} (examples: 4K, 64K, 1M, 16M)") from None
    if n <= 0:
        raise typer.BadParameter(f"size must be > 0: {text!r}")
    return n


def _points(spec: str, batch: Optional[int]) -> list[tuple[int, int]]:
    out = []
    for item in spec.split(","):
        bs, _, bn = item.partition(":")
        out.append((_size(bs), batch or (int(bn) if bn else 128)))
    return out


# ------------------------------------------------------------------ target
def serve_target(host: str, port: int, buffer_size: int, token: str) -> None:
    te = TransferEngine(f"{host}:{port}", auth_token=token)
    addr = te.allocate_managed_buffer(buffer_size)
    # Touch every page now so the first timed pass does not pay for page faults.
    view = np.frombuffer(ffi.buffer(ffi.cast("char *", addr), buffer_size), dtype=np.uint8)
    view[::4096] = 1
    print(json.dumps({"port": te.port, "addr": addr, "size": buffer_size, "pid": os.getpid()}),
          flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait()
    te.close()


# --------------------------------------------------------------- initiator
def run_initiator(target: str, remote_addr: int, remote_size: int, *, op: str, block: int,
                  batch: int, threads: int, duration: float, protocol: str, streams: int,
                  slice_bytes: int, token: str, progress=None, target_pid: int = 0) -> dict:
    """Move blocks for `duration` seconds; returns the measured point. With
    target_pid (same host), `cpu_s` = CPU seconds both processes spent."""
    per_thread = block * batch
    if per_thread * threads > remote_size:
        batch = max(1, remote_size // (block * threads))
        per_thread = block * batch
    te = TransferEngine(use_shm=(protocol == "shm"), streams=streams, slice_bytes=slice_bytes,
                        auth_token=token)
    try:
        local = np.ones(per_thread * threads, dtype=np.uint8)
        te.register_memory(local.ctypes.data, local.nbytes)
        used = te.transport(target)
        if protocol == "shm" and used != "shm":
            raise typer.BadParameter(f"shm asked for but the target is reached by {used}")
        peer = te._peer(target)
        opcode = READ if op == "read" else WRITE
        moved = [0] * threads
        errors: list[str] = []
        start = threading.Barrier(threads + 1)

        def worker(t: int) -> None:
            reqs = ffi.new("mcs_request[]", batch)
            st = ffi.new("mcs_req_status[]", batch)
            for i in range(batch):
                reqs[i].opcode, reqs[i].length = opcode, block
                reqs[i].local = local.ctypes.data + t * per_thread + i * block
                reqs[i].remote = remote_addr + t * per_thread + i * block
            start.wait()
            end = now() + duration
            while now() < end and not errors:
                bid = lib.mcs_batch_submit(te._e, peer, reqs, batch, 0)
                if bid < 0 or lib.mcs_batch_wait(te._e, bid, 60_000) != 0 or \
                        lib.mcs_batch_status(te._e, bid, st, batch) != 0 or \
                        any(st[i].state != lib.MCS_ST_COMPLETED for i in range(batch)):
                    errors.append(f"batch failed (id {bid})")
                if bid > 0:
                    lib.mcs_batch_free(te._e, bid)
                moved[t] += per_thread

        ths = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for th in ths:
            th.start()
        start.wait()
        t0 = now()
        cpu0 = time.process_time() + _proc_cpu(target_pid)
        while any(th.is_alive() for th in ths):
            for th in ths:
                th.join(0.2)
            if progress:
                progress(min(1.0, (now() - t0) / duration))
        secs = now() - t0
        cpu = time.process_time() + _proc_cpu(target_pid) - cpu0
        if errors:
            raise RuntimeError(f"{op} {block}B: {errors[0]}")
        total = sum(moved)
        return {"test": "transfer", "protocol": used, "op": op, "block_size": block,
                "batch_size": batch, "threads": threads, "bytes": total, "secs": round(secs, 3),
                "GBps": round(total / secs / 1e9, 3), "cpu_s": round(cpu, 4) if target_pid else None}
    finally:
        te.close()


def _proc_cpu(pid: int) -> float:
    """user+system CPU seconds of a process (0 when pid is 0 or gone)."""
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


# ---------------------------------------------------------------- ceilings
def tcp_ceiling(duration: float, chunk: int = 16 * MiB) -> dict:
    """A plain Python socket pair in two processes over 127.0.0.1 (sendall / recv_into)."""
    from ..bench.ceilings import tcp_loopback

    rec = tcp_loopback(duration, chunk)
    return {"test": "ceiling_tcp", "bytes": rec["bytes"], "secs": rec["secs"],
            "GBps": rec["GBps"], "cpu_s": rec["cpu_s"]}


def memcpy_ceiling(block: int, batch: int, duration: float) -> dict:
    """memcpy of the same blocks over the same footprint (src and dst), one thread."""
    n = block * batch
    src = np.ones(n, dtype=np.uint8)
    dst = np.ones(n, dtype=np.uint8)
    sp, dp = ffi.cast("char *", src.ctypes.data), ffi.cast("char *", dst.ctypes.data)
    copy, done = lib.mcs_copy, 0
    cpu0 = time.process_time()
    t0 = now()
    end = t0 + duration
    while now() < end:
        for i in range(batch):
            copy(dp + i * block, sp + i * block, block)
        done += n
    secs = now() - t0
    return {"test": "ceiling_memcpy", "block_size": block, "bytes": done, "secs": round(secs, 3),
            "GBps": round(done / secs / 1e9, 3), "cpu_s": round(time.process_time() - cpu0, 4)}


# -------------------------------------------------------------------- local
def _spawn_target(buffer_size: int, token: str) -> tuple[subprocess.Popen, dict]:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "mooncake_store.cli.bench_transfer", "--mode",
                             "target", "--buffer-size", str(buffer_size), "--token", token],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError("bench target did not start")
    return proc, json.loads(line)


def _alternate(bar, task, proto, block, batch, ops, target, info, threads, duration, streams,
               slice_bytes, token, ceiling, alternations) -> list[dict]:
    """One block size: the ceiling and our engine take turns in short slices of the
    duration, so load from other processes on a shared box hits both alike."""
    step = duration / alternations
    ours = {op: None for op in ops}
    ceil = {op: [0, 0.0, 0.0] for op in ops}
    for _ in range(alternations):
        c = tcp_ceiling(step) if ceiling and proto == "tcp" else None
        for op in ops:
            bar.update(task, description=f"{proto} {op} {block // KiB} KiB x{batch}")
            r = run_initiator(target, info["addr"], info["size"], op=op, block=block, batch=batch,
                              threads=threads, duration=step, protocol=proto, streams=streams,
                              slice_bytes=slice_bytes, token=token, target_pid=info["pid"])
            if ours[op] is None:
                ours[op] = r
            else:
                for k in ("bytes", "secs", "cpu_s"):
                    ours[op][k] += r[k]
            if ceiling and proto == "shm":
                c = memcpy_ceiling(block, r["batch_size"], step)
            if c:
                ceil[op][0] += c["bytes"]
                ceil[op][1] += c["secs"]
                ceil[op][2] += c["cpu_s"]
        bar.advance(task, len(ops) / alternations)
    out = []
    for op, r in ours.items():
        r["secs"] = round(r["secs"], 3)
        r["GBps"] = round(r["bytes"] / r["secs"] / 1e9, 3)
        r["alternations"] = alternations
        if ceil[op][1] > 0:
            r["ceiling_GBps"] = round(ceil[op][0] / ceil[op][1] / 1e9, 3)
            r["ceiling"] = "python socket pair, 2 processes" if proto == "tcp" else "memcpy, same blocks"
            r["x_ceiling"] = round(r["GBps"] / r["ceiling_GBps"], 3)
            # Bytes per CPU-second of both processes: hardly moved by other load on the box.
            if r["cpu_s"] > 0 and ceil[op][2] > 0:
                r["GB_per_cpu_s"] = round(r["bytes"] / r["cpu_s"] / 1e9, 3)
                r["ceiling_GB_per_cpu_s"] = round(ceil[op][0] / ceil[op][2] / 1e9, 3)
                r["x_ceiling_cpu"] = round(r["GB_per_cpu_s"] / r["ceiling_GB_per_cpu_s"], 3)
        r["cpu_s"] = round(r["cpu_s"], 4)
        out.append(r)
    return out


def run_local(points, ops, protocols, threads, duration, streams, slice_bytes, token, ceiling,
              as_json, buffer_size, alternations=3) -> list[dict]:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    console = Console(stderr=True)
    results: list[dict] = []
    proc, info = _spawn_target(buffer_size, token)
    target = f"127.0.0.1:{info['port']}"
    try:
        steps = len(points) * len(ops) * len(protocols)
        with Progress(console=console, transient=True, disable=as_json) as bar:
            task = bar.add_task("transfer", total=steps)
            for proto in protocols:
                for block, batch in points:
                    results += _alternate(bar, task, proto, block, batch, ops, target, info,
                                          threads, duration, streams, slice_bytes, token,
                                          ceiling, alternations)
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if as_json:
        for r in results:
            print(json.dumps(r))
    else:
        t = Table(title="mstore bench transfer (127.0.0.1)")
        for col in ("protocol", "op", "block", "batch", "threads", "GB/s", "ceiling GB/s", "x ceiling",
                    "x ceiling per CPU-s"):
            t.add_column(col, justify="right")
        for r in results:
            if r["test"] == "transfer":
                t.add_row(r["protocol"], r["op"], f"{r['block_size'] // KiB} KiB", str(r["batch_size"]),
                          str(r["threads"]), f"{r['GBps']:.2f}", f"{r.get('ceiling_GBps', 0):.2f}",
                          f"{r.get('x_ceiling', 0):.2f}", f"{r.get('x_ceiling_cpu', 0):.2f}")
        Console().print(t)
        Console().print("ceilings, taking turns with each point: tcp = Python socket pair in 2 processes; "
                        "shm = memcpy of the same blocks")
    return results


# ---------------------------------------------------------------- command
def bench_transfer(
    mode: str = typer.Option("local", help="local | target | initiator"),
    protocol: str = typer.Option("tcp", help="tcp | shm | both (local mode)"),
    block_size: str = typer.Option(DEFAULT_POINTS,
                                   help="block sizes, optionally with a batch size each: 64K:128,16M:8"),
    batch_size: Optional[int] = typer.Option(None, help="requests per batch (overrides the list)"),
    threads: int = typer.Option(1, min=1, max=64, help="initiator threads"),
    duration: float = typer.Option(2.0, min=0.1, max=3600, help="seconds per point"),
    op: str = typer.Option("both", help="read | write | both"),
    target: str = typer.Option("", help="initiator: the target's host:port"),
    segment_addr: int = typer.Option(0, help="initiator: the target's buffer address"),
    buffer_size: str = typer.Option("512M", help="target buffer size"),
    host: str = typer.Option("127.0.0.1", help="target: address to listen on"),
    port: int = typer.Option(0, min=0, max=65535, help="target: port (0 = any)"),
    streams: int = typer.Option(4, min=1, max=16, help="tcp connections per peer"),
    slice_size: str = typer.Option("1M", help="tcp slice size"),
    token: str = typer.Option("", help="shared secret (default: $MOONCAKE_AUTH_TOKEN)"),
    ceiling: bool = typer.Option(True, help="measure the raw ceilings in the same run"),
    alternations: int = typer.Option(3, min=1, max=50,
                                     help="local: turns the ceiling and the engine take per point"),
    json_out: bool = typer.Option(False, "--json", help="JSON lines on stdout"),
) -> None:
    """Transfer-engine throughput (GB/s) next to raw socket-pair and memcpy ceilings."""
    token = token or os.environ.get("MOONCAKE_AUTH_TOKEN", "")
    if mode not in ("local", "target", "initiator"):
        raise typer.BadParameter(f"mode must be local, target or initiator, got {mode!r}")
    if op not in ("read", "write", "both"):
        raise typer.BadParameter(f"op must be read, write or both, got {op!r}")
    if protocol not in ("tcp", "shm", "both"):
        raise typer.BadParameter(f"protocol must be tcp, shm or both, got {protocol!r}")
    try:
        _dispatch(mode, protocol, block_size, batch_size, threads, duration, op, target,
                  segment_addr, buffer_size, host, port, streams, slice_size, token, ceiling, json_out,
                  alternations)
    except (StoreError, RuntimeError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


def _dispatch(mode, protocol, block_size, batch_size, threads, duration, op, target, segment_addr,
              buffer_size, host, port, streams, slice_size, token, ceiling, json_out,
              alternations) -> None:
    ops = ["read", "write"] if op == "both" else [op]
    protocols = ["tcp", "shm"] if protocol == "both" else [protocol]
    points = _points(block_size, batch_size)
    size = _size(buffer_size)
    if mode == "target":
        serve_target(host, port, size, token)
        return
    if mode == "initiator":
        if not target or segment_addr <= 0:
            raise typer.BadParameter("initiator needs --target host:port and --segment-addr")
        for proto in protocols:
            for block, batch in points:
                for o in ops:
                    r = run_initiator(target, segment_addr, size, op=o, block=block, batch=batch,
                                      threads=threads, duration=duration, protocol=proto,
                                      streams=streams, slice_bytes=_size(slice_size), token=token)
                    print(json.dumps(r) if json_out else
                          f"{proto} {o} {block} B x{r['batch_size']}: {r['GBps']:.3f} GB/s", flush=True)
        return
    run_local(points, ops, protocols, threads, duration, streams, _size(slice_size), token, ceiling,
              json_out, size, alternations)


if __name__ == "__main__":
    typer.run(bench_transfer)
