"""Transfer engine vs raw ceilings vs Mooncake's transfer_engine_bench, interleaved.

Each round runs, back to back on the same box: `mstore bench transfer --json`
(our engine over tcp and shm, with the socket-pair and memcpy ceilings measured in
that run) and, when the anchor is installed, Mooncake's own transfer_engine_bench
over TCP (../shared/anchors/mooncake/teb.sh). Medians over rounds go to a markdown
table (for docs/PERFORMANCE.md); every raw line goes to results/transfer-<time>.jsonl.
Also measured: registering 1 GiB, and the CPU an idle engine with an open peer uses.

    python bench/transfer_bench.py --rounds 3 --duration 2
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TEB = Path(os.environ.get("MC_ANCHOR", ROOT.parent / "shared" / "anchors" / "mooncake")) / "teb.sh"


def ours(duration: float, threads: int) -> list[dict]:
    cmd = [sys.executable, "-c", "from mooncake_store.cli.main import app; app()", "bench", "transfer",
           "--json", "--protocol", "both", "--duration", str(duration), "--threads", str(threads)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    return [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]


def mooncake(duration: float, threads: int) -> list[dict]:
    if not TEB.exists():
        return []
    out = subprocess.run([str(TEB), str(max(1, round(duration))), str(threads)], capture_output=True,
                         text=True, timeout=900)
    return [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]


def register_1gib_ms() -> float:
    from mooncake_store.transfer import TransferEngine
    from mooncake_store._engine import ffi
    m = mmap.mmap(-1, 1 << 30)
    addr = int(ffi.cast("uintptr_t", ffi.from_buffer(m)))
    with TransferEngine() as te:
        t0 = time.perf_counter()
        rc = te.register_memory(addr, 1 << 30)
        ms = (time.perf_counter() - t0) * 1e3
        assert rc == 0
        te.unregister_memory(addr)
    return ms


def idle_cpu_percent(seconds: float = 3.0) -> float:
    """CPU of this process while a server and a client with an open tcp peer sit idle."""
    from mooncake_store.transfer import TransferEngine
    with TransferEngine("127.0.0.1") as srv, TransferEngine(use_shm=False) as cli:
        cli.connect(srv.get_local_hostname())
        time.sleep(0.2)
        c0, t0 = time.process_time(), time.perf_counter()
        time.sleep(seconds)
        return 100.0 * (time.process_time() - c0) / (time.perf_counter() - t0)


def summarize(rows: list[dict]) -> str:
    med = statistics.median
    ceil_tcp = [r["ceiling_GBps"] for r in rows
                if r.get("test") == "transfer" and r.get("protocol") == "tcp" and r.get("ceiling_GBps")]
    keyed: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("test") == "transfer":
            keyed.setdefault((r["protocol"], r["op"], r["block_size"]), []).append(r)
    mc: dict[tuple, list[float]] = {}
    for r in rows:
        if r.get("test") == "transfer_engine_bench" and r.get("GBps") is not None:
            mc.setdefault((r["operation"], r["block_size"]), []).append(r["GBps"])
    lines = ["| protocol | op | block | batch | ours GB/s | ceiling GB/s | x ceiling | x ceiling per CPU-s "
             "| Mooncake GB/s | x Mooncake |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (proto, op, bs), rs in sorted(keyed.items()):
        g = med(r["GBps"] for r in rs)
        c = med(r["ceiling_GBps"] for r in rs if r.get("ceiling_GBps"))
        x = med(r["x_ceiling"] for r in rs if r.get("x_ceiling"))  # per round: taken in turns
        xc = [r["x_ceiling_cpu"] for r in rs if r.get("x_ceiling_cpu")]
        xcs = f"{med(xc):.2f}" if xc else "–"
        m = med(mc[(op, bs)]) if proto == "tcp" and mc.get((op, bs)) else None
        size = f"{bs >> 20} MiB" if bs >= 1 << 20 else f"{bs >> 10} KiB"
        lines.append(f"| {proto} | {op} | {size} | {rs[0]['batch_size']} | {g:.2f} | {c:.2f} | {x:.2f} | {xcs} | "
                     + (f"{m:.2f} | {g / m:.1f} |" if m else "– | – |"))
    if ceil_tcp:
        lines.append(f"\nSocket-pair ceiling (Python, 2 processes, taking turns with each tcp point): "
                     f"median {med(ceil_tcp):.2f} GB/s, range {min(ceil_tcp):.2f}-{max(ceil_tcp):.2f}. "
                     "x ceiling = median over rounds of each round's ratio.")
    return "\n".join(lines)


def resummarize(path: str) -> None:
    rows = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    print(summarize(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=1, help="our initiator threads")
    ap.add_argument("--mc-threads", type=int, default=2, help="transfer_engine_bench threads")
    ap.add_argument("--no-mooncake", action="store_true")
    ap.add_argument("--summarize", metavar="JSONL", help="only reprint the table of an earlier run")
    args = ap.parse_args()
    if args.summarize:
        resummarize(args.summarize)
        return
    rows: list[dict] = []
    for i in range(args.rounds):
        print(f"round {i + 1}/{args.rounds}: ours", file=sys.stderr, flush=True)
        rows += ours(args.duration, args.threads)
        if not args.no_mooncake:
            print(f"round {i + 1}/{args.rounds}: mooncake transfer_engine_bench", file=sys.stderr, flush=True)
            rows += mooncake(args.duration, args.mc_threads)
    rows.append({"test": "register_1gib", "ms": round(register_1gib_ms(), 3)})
    rows.append({"test": "idle_cpu", "percent": round(idle_cpu_percent(), 3)})
    out = ROOT / "results" / f"transfer-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    out.parent.mkdir(exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(summarize(rows))
    print(f"\nRegister 1 GiB: {rows[-2]['ms']:.3f} ms; idle engine (server + client with an open "
          f"peer): {rows[-1]['percent']:.2f}% of a core.\nraw lines: {out}")


if __name__ == "__main__":
    main()
