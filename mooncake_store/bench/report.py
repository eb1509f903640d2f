"""Result formatting: rich tables from result records, the issue's goals, and the side-by-side
comparison with Mooncake (rows matched by test / op / api / value size, same path preferred)."""
from __future__ import annotations

from typing import Any, Iterable

from rich import box
from rich.console import Console
from rich.table import Table

from .rounds import ratio_range
from .stats import MiB, human_size

MODE_NAMES = {"bytes": "copy", "zc": "zero-copy", "zc_batch": "batch"}


def _table(title: str) -> Table:
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
GET_4K_GOAL = 50_000
ZC_4M_GOAL = 0.7


def _by(records: Iterable[dict], test: str) -> list[dict]:
    return [r for r in records if r.get("test") == test]


def _bad(r: dict) -> bool:
    return bool(r.get("fails") or r.get("verified") is False or r.get("populate_fails"))


def _ok_mark(r: dict) -> str:
    if _bad(r):
        return "[red]FAIL[/]"
    return "[green]ok[/]" if r.get("verified") else ""


def _f(x: Any, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


# ---- goals ------------------------------------------------------------------------------------
def goals(records: list[dict]) -> list[dict]:
    """The performance goals of issue 2 (embedded store), evaluated on this run's records."""
    out: list[dict] = []
    params = (_by(records, "params") or [{}])[0]
    if params.get("master", "embedded") != "embedded":
        return out
    for op in ("put", "get"):
        row = next((r for r in _by(records, "throughput") if r["op"] == op and r["api"] == "zc"
                    and r["value_size"] == 4 * MiB and r["path"] == "local"), None)
        if row and row.get("x_memcpy") is not None:
            name = "put_from" if op == "put" else "get_into"
            out.append({"test": "goal", "name": f"{name} 4 MiB / memcpy", "value": row["x_memcpy"],
                        "target": ZC_4M_GOAL, "met": row["x_memcpy"] >= ZC_4M_GOAL})
    row = next((r for r in _by(records, "small_ops") if r["op"] == "get" and r["path"] == "local"),
               None)
    if row:
        out.append({"test": "goal", "name": "4 KiB get ops/s, 1 thread", "value": row["ops_per_s"],
                    "target": GET_4K_GOAL, "met": row["ops_per_s"] >= GET_4K_GOAL})
    return out


# Issue [C]'s goals against Mooncake, for a cluster run with --compare mooncake:
# (name, target ratio, which of our rows it covers).
CLUSTER_GOALS = (
    ("remote tcp 1-16 MiB put_from/get_into and batch >= 2x Mooncake", 2.0,
     lambda r: r.get("test") == "throughput" and r.get("path") == "remote_tcp"
     and r.get("api") in ("zc", "zc_batch") and MiB <= r.get("value_size", 0) <= 16 * MiB),
    ("same-host shm reads of 4 MiB >= 5x Mooncake's remote path", 5.0,
     lambda r: r.get("test") == "throughput" and r.get("path") == "remote_shm"
     and r.get("op") == "get" and r.get("value_size") == 4 * MiB),
    ("4 KiB ops, one thread, >= 1.5x Mooncake with a p99 no higher", 1.5,
     lambda r: r.get("test") == "small_ops" and str(r.get("path", "")).startswith("remote")),
    ("batch get of 64 x 256 KiB >= 2x Mooncake", 2.0,
     lambda r: r.get("test") == "batch" and str(r.get("path", "")).startswith("remote")
     and r.get("op") in ("batch_get_into", "get_batch")),
)


def cluster_goals(records: list[dict], mooncake: list[dict] | None) -> list[dict]:
    """Issue [C]'s goals evaluated on this run's remote rows and Mooncake's matching ones:
    per goal the lowest ratio, and how many of its rows meet it (a 4 KiB row also needs a
    p99 no higher than Mooncake's). Goals with no rows in this run are left out."""
    if not mooncake:
        return []
    out = []
    for name, target, covers in CLUSTER_GOALS:
        pairs = [(r, match(r, mooncake)) for r in records if covers(r)]
        ratios = []
        for r, m in pairs:
            key = "ops_per_s" if r["test"] == "small_ops" else "GBps"
            if m and m.get(key) and r.get(key) is not None:
                p99_ok = r["test"] != "small_ops" or (r.get("p99_us") or 0) <= (m.get("p99_us") or 0)
                ratios.append((r[key] / m[key], p99_ok))
        if not ratios:
            continue
        ok = sum(1 for x, p99_ok in ratios if x >= target and p99_ok)
        out.append({"test": "goal", "name": name, "value": round(min(x for x, _ in ratios), 3),
                    "target": target, "rows": len(ratios), "rows_met": ok,
                    "met": ok == len(ratios)})
    return out


# ---- matching with Mooncake ----------------------------------------------------------------------
def _match_key(r: dict) -> tuple:
    return (r.get("test"), r.get("op"), r.get("api"), r.get("value_size"))


def match(ours: dict, theirs: list[dict]) -> dict | None:
    """The Mooncake row for one of ours: same test/op/api/value size, same path if it has one."""
    same = [t for t in theirs if _match_key(t) == _match_key(ours)]
    for t in same:
        if t.get("path") == ours.get("path"):
            return t
    return same[0] if same else None


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    x = a / b
    color = "green" if x >= 1 else "yellow" if x >= 0.5 else "red"
    return f"[{color}]{x:.2f}x[/]"


def _path_cell(ours: dict, t: dict | None) -> str:
    if t is None:
        return "-"
    return t["path"] if t.get("path") == ours.get("path") else f"[yellow]{t['path']}[/]"


def _rounds(records: list[dict]) -> int:
    return max((r.get("rounds", 1) for r in records), default=1)


def _range_cell(r: dict, m: dict | None) -> str:
    got = ratio_range(r, m)
    return "-" if got is None else f"{got[0]:.2f}-{got[1]:.2f}x"


# ---- tables ------------------------------------------------------------------------------
def print_report(records: list[dict], console: Console, mooncake: list[dict] | None = None,
                 remote_note: str | None = None) -> None:
    params = (_by(records, "params") or [{}])[0]
    title = (f"{records[0]['impl'] if records else ''}: {params.get('master', 'embedded')} store, "
             f"1 thread, {params.get('cpus')} CPUs, {params.get('seconds')} s per phase "
             "(GB/s = 1e9 B/s)")
    n = _rounds(records)
    if n > 1:
        title += (f"; {n} rounds{', alternating with Mooncake' if mooncake else ''}: each row "
                  "is its median round")
    console.print(f"[bold]{title}[/]")
    _print_ceilings(records, console, mooncake)
    _print_throughput(records, console, mooncake)
    _print_small(records, console, mooncake)
    _print_batch(records, console, mooncake)
    _print_gpu(records, console)
    if remote_note:
        console.print(f"[yellow]{remote_note}[/]")
    _print_goals(records, console)
    _print_cluster_goals(records, mooncake, console)
    _print_checks(records, console)


def _print_ceilings(records: list[dict], console: Console, mooncake: list[dict] | None) -> None:
    ceil: dict[int, dict[str, float]] = {}
    for r in _by(records, "ceiling_memcpy"):
        ceil.setdefault(r["value_size"], {})[r["direction"]] = r["GBps"]
    if ceil:
        first = _by(records, "ceiling_memcpy")[0]
        parts = [f"{human_size(size)} {_f(c.get('to_store'), '{:.1f}')}/"
                 f"{_f(c.get('from_store'), '{:.1f}')}" for size, c in ceil.items()]
        console.print(f"memcpy ceiling, one call per value between {first['small_mib']} MiB "
                      f"and {first['big_mib']} MiB buffers, GB/s to store (puts) / from store "
                      "(gets): " + ", ".join(parts), soft_wrap=True)
    for r in _by(records, "ceiling_memcpy_bulk"):
        console.print(f"memcpy ceiling (one {r['bytes'] // MiB} MiB copy, best of {r['reps']}): "
                      f"{r['GBps_best']:.1f} GB/s")
    for r in _by(records, "ceiling_tcp_loopback"):
        console.print(f"TCP loopback ceiling (python socket pair): {r['GBps']:.2f} GB/s")
    rts = _by(records, "ceiling_tcp_round_trip")
    if rts:
        console.print("TCP round-trip ceiling (python socket pair, one value then an 8-byte "
                      "answer; bounds a lone put or get), GB/s (p50 us): "
                      + ", ".join(f"{human_size(r['value_size'])} {r['GBps']:.2f} "
                                  f"({_f(r.get('p50_us'), '{:.0f}')})" for r in rts),
                      soft_wrap=True)
    for r in _by(records, "warmup"):
        console.print(f"warm-up (first touch of {r['bytes'] // MiB} MiB of segment, untimed by "
                      f"the phases): {r['GBps']:.2f} GB/s")
    if mooncake:
        m = {r["test"]: r for r in mooncake}
        mc = m.get("ceiling_memcpy", {}).get("GBps_best")
        tcp = m.get("ceiling_tcp_loopback", {}).get("GBps")
        console.print(f"Mooncake run's ceilings: memcpy {_f(mc, '{:.1f}')} GB/s, "
                      f"TCP loopback {_f(tcp)} GB/s")


def _print_throughput(records: list[dict], console: Console, mooncake: list[dict] | None) -> None:
    rows = _by(records, "throughput")
    if not rows:
        return
    t = _table("Throughput per value size (x memcpy = GB/s / memcpy ceiling of that size "
               "and direction)")
    show_path = mooncake is not None or len({r["path"] for r in rows}) > 1
    show_tcp = any("x_tcp_ceiling" in r for r in rows)
    show_rt = any("x_tcp_rt" in r for r in rows)
    for col in ("size", "op", "mode", "path", "GB/s", "ops/s", "p50 us", "p99 us",
                "memcpy", "x memcpy", "x tcp", "x tcp rt"):
        if (col == "path" and not show_path) or (col == "x tcp" and not show_tcp) \
                or (col == "x tcp rt" and not show_rt):
            continue
        t.add_column(col, justify="left" if col in ("op", "mode", "path") else "right")
    ranged = _mooncake_columns(t, rows, mooncake, "Mooncake GB/s")
    last = None
    for r in rows:
        if last is not None and r["value_size"] != last:
            t.add_section()
        last = r["value_size"]
        cells = [human_size(r["value_size"]), r["op"], MODE_NAMES.get(r["api"], r["api"])]
        cells += [r["path"]] if show_path else []
        cells += [f"{r['GBps']:.2f}", f"{r['ops_per_s']:,.0f}",
                 _f(r.get("p50_us"), "{:.1f}"), _f(r.get("p99_us"), "{:.1f}"),
                 _f(r.get("memcpy_GBps")), _f(r.get("x_memcpy"))]
        cells += [_f(r.get("x_tcp_ceiling"))] if show_tcp else []
        cells += [_f(r.get("x_tcp_rt"))] if show_rt else []
        if mooncake is not None:
            cells += _mooncake_gbps_cells(r, mooncake, ranged)
        cells.append(_ok_mark(r))
        t.add_row(*cells)
    console.print(t)
    console.print("read: ok = first read of the phase matched the source byte for byte "
                  "(every read also checks the CRC32C)")


def _print_small(records: list[dict], console: Console, mooncake: list[dict] | None) -> None:
    rows = _by(records, "small_ops")
    if not rows:
        return
    t = _table("Small objects: 4 KiB, one thread")
    for col in ("op", "path", "ops/s", "p50 us", "p99 us"):
        t.add_column(col, justify="left" if col in ("op", "path") else "right")
    ranged = _mooncake_columns(t, rows, mooncake, "Mooncake ops/s", "Mooncake p50 us",
                               "Mooncake p99 us")
    for r in rows:
        cells = [r["op"], r["path"], f"{r['ops_per_s']:,.0f}", _f(r.get("p50_us"), "{:.1f}"),
                 _f(r.get("p99_us"), "{:.1f}")]
        if mooncake is not None:
            m = match(r, mooncake)
            cells += [_f(m and m.get("ops_per_s"), "{:,.0f}"), _f(m and m.get("p50_us"), "{:.1f}"),
                      _f(m and m.get("p99_us"), "{:.1f}"), _path_cell(r, m),
                      _ratio(r["ops_per_s"], m and m.get("ops_per_s"))]
            cells += [_range_cell(r, m)] if ranged else []
        cells.append(_ok_mark(r))
        t.add_row(*cells)
    console.print(t)


def _print_batch(records: list[dict], console: Console, mooncake: list[dict] | None) -> None:
    rows = _by(records, "batch")
    if not rows:
        return
    t = _table("Batches: 64 keys x 256 KiB per call")
    for col in ("op", "path", "GB/s", "batches/s", "p50 ms", "p99 ms", "x memcpy"):
        t.add_column(col, justify="left" if col in ("op", "path") else "right")
    ranged = _mooncake_columns(t, rows, mooncake, "Mooncake GB/s")
    for r in rows:
        cells = [r["op"], r["path"], f"{r['GBps']:.2f}", f"{r['batches_per_s']:,.1f}",
                 _f(r.get("p50_us") and r["p50_us"] / 1e3),
                 _f(r.get("p99_us") and r["p99_us"] / 1e3),
                 _f(r.get("x_memcpy"))]
        if mooncake is not None:
            cells += _mooncake_gbps_cells(r, mooncake, ranged)
        cells.append(_ok_mark(r))
        t.add_row(*cells)
    console.print(t)


def _print_gpu(records: list[dict], console: Console) -> None:
    """The GPU section (bench/gpu.py): device tensors through pinned staging, x pinned copy."""
    for r in _by(records, "ceiling_device_copy"):
        console.print(f"{'pinned' if r.get('pinned') else 'host'} torch copy ceiling "
                      f"{human_size(r['value_size'])} {r['direction'].replace('_', ' ')}: "
                      f"{r['GBps']:.2f} GB/s")
    rows = _by(records, "gpu_throughput")
    if not rows:
        return
    t = _table("Device tensors <-> local DRAM segment (x copy = GB/s / pinned torch copy of "
               "that size and direction)")
    for col in ("size", "op", "mode", "device", "GB/s", "ops/s", "p50 us", "p99 us", "copy",
                "x copy"):
        t.add_column(col, justify="left" if col in ("op", "mode", "device") else "right")
    t.add_column("read")
    for r in rows:
        api = "put_from" if r["op"] == "put" else "get_into"
        t.add_row(human_size(r["value_size"]), r["op"], api, r["device"], f"{r['GBps']:.2f}",
                  f"{r['ops_per_s']:,.0f}", _f(r.get("p50_us"), "{:.1f}"),
                  _f(r.get("p99_us"), "{:.1f}"), _f(r.get("copy_GBps")), _f(r.get("x_copy")),
                  _ok_mark(r))
    console.print(t)
    console.print("put: device -> pinned staging (torch copy) -> put_from; get: get_into pinned "
                  "staging -> device; read: ok = the device tensor matched its source")


def _mooncake_columns(t: Table, rows: list[dict], mooncake: list[dict] | None,
                      *figures: str) -> bool:
    """Mooncake's figures, its path and our ratio (with the per-round range over several
    rounds), then the read check. Returns whether the per-round column is there."""
    ranged = mooncake is not None and _rounds(rows) > 1
    if mooncake is not None:
        for col in (*figures, "Mooncake path", "ours / Mooncake"):
            t.add_column(col, justify="right")
        if ranged:
            t.add_column("per round", justify="right")
    t.add_column("read")
    return ranged


def _mooncake_gbps_cells(r: dict, mooncake: list[dict], ranged: bool) -> list[str]:
    """Mooncake's GB/s for the matching row, its path, and our ratio to it (and its range
    over the rounds, when there were several)."""
    m = match(r, mooncake)
    cells = [_f(m and m.get("GBps")), _path_cell(r, m), _ratio(r["GBps"], m and m.get("GBps"))]
    return cells + ([_range_cell(r, m)] if ranged else [])


def _print_goals(records: list[dict], console: Console) -> None:
    for g in goals(records):
        mark = "[green]met[/]" if g["met"] else "[red]not met[/]"
        value = f"{g['value']:,.0f}" if g["value"] >= 100 else f"{g['value']:.2f}"
        console.print(f"goal {g['name']}: {value} (target >= {g['target']:,}) {mark}")


def _print_cluster_goals(records: list[dict], mooncake: list[dict] | None,
                         console: Console) -> None:
    for g in cluster_goals(records, mooncake):
        mark = "[green]met[/]" if g["met"] else "[red]not met[/]"
        console.print(f"goal {g['name']}: {g['rows_met']} of {g['rows']} rows, lowest "
                      f"{g['value']:.2f}x {mark}", highlight=False)


def _print_checks(records: list[dict], console: Console) -> None:
    timed = (_by(records, "throughput") + _by(records, "small_ops") + _by(records, "batch")
             + _by(records, "gpu_throughput"))
    fails = sum(r.get("fails", 0) for r in timed)
    ver = [r["verified"] for r in timed if r.get("verified") is not None]
    color = "green" if not fails and all(ver) else "red"
    console.print(f"[{color}]checks: {len(timed)} timed phases, {fails} failed ops, "
                  f"{sum(ver)}/{len(ver)} first reads verified byte for byte[/]")
