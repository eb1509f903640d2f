"""`mstore trace replay`: replay a request trace through the real store."""
from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..config import Config, parse_size
from ..errors import InvalidParams, StoreError
from ..master.policy import POLICIES, make_policy
from .main import app

trace_app = typer.Typer(help="Request traces: replay them through the store.", no_args_is_help=True)
app.add_typer(trace_app, name="trace")

_DEFAULT_PCT = 10.0


def _fail(msg: str) -> None:
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {msg}", highlight=False)
    raise typer.Exit(2)


def _policies(spec: Optional[str], sweep: bool) -> list[str]:
    default = Config().eviction_policy
    if not spec:
        return ["lru", default] if sweep and default != "lru" else [default]
    names = [p.strip() for p in spec.split(",") if p.strip()]
    for p in names:
        make_policy(p)  # raises InvalidParams naming the choices
    return list(dict.fromkeys(names))


def _pcts(spec: str) -> list[float]:
    out = []
    for part in spec.split(","):
        try:
            v = float(part)
        except ValueError:
            raise InvalidParams(f"--sweep: {part.strip()!r} is not a number "
                                "(example: --sweep 2,5,10,20)") from None
        out.append(_check_pct(v, "--sweep: capacity percentages"))
    return sorted(set(out))


def _check_pct(v: float, what: str) -> float:
    if not 0 < v <= 100:
        raise InvalidParams(f"{what} must be in (0, 100], got {v:g}")
    return v


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@trace_app.command("replay")
def replay_cmd(
    trace_path: str = typer.Argument(..., metavar="TRACE",
                                     help="JSONL trace (see docs/eviction.md)."),
    block_bytes: str = typer.Option("64KiB", "--block-bytes", help="Payload of one block."),
    capacity: Optional[str] = typer.Option(None, "--capacity",
                                           help="Store capacity as a size (e.g. 2GB)."),
    capacity_pct: Optional[float] = typer.Option(
        None, "--capacity-pct", help="Capacity as % of the trace's distinct blocks (default 10)."),
    sweep: Optional[str] = typer.Option(None, "--sweep",
                                        help="Comma-separated capacity %s, e.g. 2,5,10,20,50."),
    policy: Optional[str] = typer.Option(
        None, "--policy", help=f"Comma-separated policies ({', '.join(sorted(POLICIES))}); "
        "default: the configured one, plus lru in a sweep."),
    speed: float = typer.Option(0.0, "--speed",
                                help="Time scale of arrivals; 0 = as fast as possible."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Replay only the first N requests."),
    plot: str = typer.Option("trace_sweep.png", "--plot", help="Where a sweep draws its PNG."),
    as_json: bool = typer.Option(False, "--json",
                                 help="One JSON object per (policy, capacity) point."),
) -> None:
    """Replay TRACE through an embedded Store: per request, longest_prefix, get and
    verify the cached leading blocks, put the missing ones. Reports the prefix-hit
    rate next to the exact block-level simulation and the unbounded-cache bound."""
    from .. import trace as tr

    try:
        bb = parse_size(block_bytes, "--block-bytes")
        tr.Payloads(bb)  # validates the size
        if capacity is not None and (capacity_pct is not None or sweep):
            raise InvalidParams("--capacity is exclusive with --capacity-pct and --sweep")
        if limit is not None and limit <= 0:
            raise InvalidParams(f"--limit: must be > 0, got {limit}")
        if capacity_pct is not None:
            _check_pct(capacity_pct, "--capacity-pct:")
        if speed < 0:
            raise InvalidParams(f"--speed: must be >= 0 (0 = as fast as possible), got {speed:g}")
        pols = _policies(policy, bool(sweep))
        pcts: list[Optional[float]] = _pcts(sweep) if sweep else [
            None if capacity is not None else
            (_DEFAULT_PCT if capacity_pct is None else capacity_pct)]
        trace = tr.load_trace(trace_path, limit)
    except StoreError as e:
        _fail(str(e))
    out = Console(stderr=as_json)
    if not out.is_terminal:
        out = Console(stderr=as_json, width=160)  # the table stays readable in logs
    bound = tr.unbounded_hit_rate(trace)
    foot = tr.store_footprint(bb, tr.block_key(max(h for r in trace.requests for h in r.hash_ids)))
    points = []
    for pct in pcts:
        blocks = (tr.capacity_blocks(trace, pct) if pct is not None
                  else parse_size(capacity, "--capacity") // foot)
        if blocks <= 0:
            _fail(f"--capacity {capacity} holds no block of {foot} bytes (payload + header)")
        points.append((pct, blocks))
    need = max(b for _, b in points) * foot
    avail = _mem_available()
    if avail is not None and need > 0.8 * avail:
        _fail(f"the largest point needs {need / 2**30:.1f} GiB of store memory but only "
              f"{avail / 2**30:.1f} GiB is available; use a smaller --block-bytes")
    if not as_json:
        out.print(f"trace {trace_path}: {len(trace.requests)} requests, {trace.blocks} blocks, "
                  f"{trace.distinct_blocks} distinct; unbounded-cache bound {bound:.1%}; "
                  f"block {bb} B ({foot} B in the store)", highlight=False)
    results = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as prog:
        for pct, blocks in points:
            for name in pols:
                label = f"{name} @ {pct:g}%" if pct is not None else f"{name} @ {blocks} blocks"
                task = prog.add_task(label, total=len(trace.requests))
                try:
                    res = tr.replay(trace, blocks, name, bb, speed=speed, capacity_pct=pct,
                                    on_request=lambda i, t=task: prog.update(t, completed=i + 1))
                except StoreError as e:
                    _fail(str(e))
                res.sim_hit_rate = tr.simulate_policy(
                    trace, blocks, lambda n=name: make_policy(n)).hit_rate
                res.bound = bound
                prog.remove_task(task)
                results.append(res)
                if as_json:
                    d = res.to_dict()
                    d["trace"] = trace_path
                    print(json.dumps(d), flush=True)
    if not as_json:
        out.print(_table(results))
        bad = sum(r.failed_gets for r in results)
        if bad:
            out.print(f"[red]{bad} gets failed verification[/red]")
    if sweep:
        _plot(results, bound, plot, trace_path)
        (Console(stderr=True) if as_json else out).print(f"hit-rate curve written to {plot}",
                                                          highlight=False)
    if any(r.failed_gets for r in results):
        raise typer.Exit(1)


def _table(results) -> Table:
    t = Table(title="trace replay (prefix-hit rate: replayed through the store / simulated)")
    for col in ("policy", "capacity", "blocks", "hit rate", "sim", "bound", "read", "written",
                "batch get p50", "batch get p99", "evictions", "verified", "time"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for r in results:
        t.add_row(r.policy, f"{r.capacity_pct:g}%" if r.capacity_pct is not None else
                  _bytes(r.capacity_bytes), str(r.capacity_blocks), f"{r.hit_rate:.2%}",
                  f"{r.sim_hit_rate:.2%}", f"{r.bound:.2%}", _bytes(r.bytes_read),
                  _bytes(r.bytes_written), f"{r.get_p50_us:.0f} us", f"{r.get_p99_us:.0f} us",
                  str(r.evictions), f"{r.verified_gets}/{r.verified_gets + r.failed_gets}",
                  f"{r.elapsed_s:.1f} s")
    return t


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _plot(results, bound: float, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r.policy for r in results):
        rs = sorted((r for r in results if r.policy == name), key=lambda r: r.capacity_pct)
        xs = [r.capacity_pct for r in rs]
        line, = ax.plot(xs, [100 * r.hit_rate for r in rs], marker="o", label=f"{name} (store)")
        ax.plot(xs, [100 * r.sim_hit_rate for r in rs], linestyle="none", marker="x",
                color=line.get_color(), label=f"{name} (simulation)")
    ax.axhline(100 * bound, color="gray", linestyle="--", label=f"unbounded bound {bound:.1%}")
    ax.set_xlabel("capacity (% of distinct blocks)")
    ax.set_ylabel("prefix-hit rate (%)")
    ax.set_title(title.rsplit("/", 1)[-1])
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as e:
        plt.close(fig)
        _fail(f"cannot write plot {path!r}: {e.strerror}")
    plt.close(fig)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
