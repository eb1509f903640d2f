"""`mstore bench` (quick embedded-store benchmark) and `mstore bench store` (the Mooncake anchor's
workload, optionally side by side with Mooncake). The workloads live in mooncake_store.bench;
this module only parses options, shows progress and prints.

`--json` prints JSON Lines on stdout: one object per result, in the record format of the
anchor's bench_mooncake.py (see docs/PERFORMANCE.md); progress goes to stderr.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..bench import gpu, mooncake_compare, report, rounds as bench_rounds
from ..bench.clients import BenchSetupError
from ..bench.runner import Plan, Runner, count_phases, quick_plan, store_plan
from ..bench.stats import parse_sizes
from ..errors import StoreError

bench_app = typer.Typer(help="Benchmarks, each next to raw ceilings measured in the same run. "
                             "With no subcommand: the quick embedded-store benchmark.")

REMOTE_NOTE = "remote: needs a cluster (--master)"
QUICK_ANCHOR = dict(sizes="4K,1M,16M", seconds=0.5, ws_mib=256)   # the anchor's bench.sh --quick


def _sizes(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return parse_sizes(text)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--sizes") from None


def _progress(total: int) -> Progress:
    err = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=True,
                    disable=not err.is_terminal)


def _run(plan: Plan, as_json: bool, label: str = "mooncake_store") -> list[dict]:
    """Run our phases with a progress bar; print JSON lines as they come when asked."""
    records: list[dict] = []

    def emit(rec: dict) -> None:
        records.append(rec)
        if as_json:
            print(json.dumps(rec), flush=True)

    try:
        plan.validate()
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    with _progress(count_phases(plan)) as prog:
        task = prog.add_task(label, total=count_phases(plan))
        started = [False]

        def on_phase(name: str) -> None:
            if started[0]:
                prog.advance(task)
            started[0] = True
            prog.update(task, description=name)

        try:
            Runner(plan, emit, on_phase).run()
        except BenchSetupError as e:
            Console(stderr=True).print(f"[red]error:[/] {e}", soft_wrap=True)
            raise typer.Exit(1) from None
    return records


def _finish(records: list[dict], as_json: bool, mooncake: Optional[list[dict]] = None,
            remote_note: Optional[str] = None) -> None:
    if as_json:
        for g in report.goals(records) + report.cluster_goals(records, mooncake):
            print(json.dumps({"impl": records[0]["impl"], **g}), flush=True)
        return
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)    # piped to a file: keep every column readable
    report.print_report(records, console, mooncake, remote_note)


DEVICE_HELP = ("cpu: the host benchmark; cuda[:N]: the GPU section instead (put_from / get_into "
               "of CUDA tensors via pinned staging, next to the pinned copy ceiling). Without "
               "CUDA, --device cuda prints the reason in one line and exits with status 1.")


def _device(text: str) -> str:
    d = text.strip().lower()
    if d == "cpu" or d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit()):
        return d
    raise typer.BadParameter(f"unknown device {text!r} (cpu, cuda or cuda:N)",
                             param_hint="--device")


def _run_gpu(device: str, sizes: Optional[list[int]], seconds: Optional[float], as_json: bool,
             **plan_kw: Any) -> None:
    """The GPU section; no CUDA is one line on stderr and exit status 1 (it was asked for)."""
    plan = gpu.GpuPlan(device=device, **{k: v for k, v in plan_kw.items() if v is not None})
    if sizes:
        plan.sizes = sizes
    if seconds:
        plan.seconds = seconds
    try:
        plan.validate()
        gpu.check_device(device)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    except gpu.NoCuda as e:
        Console(stderr=True).print(f"mstore bench --device {device}: CUDA is not available: "
                                   f"{e}", soft_wrap=True, highlight=False)
        raise typer.Exit(1) from None
    records: list[dict] = []

    def emit(rec: dict) -> None:
        records.append(rec)
        if as_json:
            print(json.dumps(rec), flush=True)

    with _progress(2 * 2 * len(plan.sizes)) as prog:
        task = prog.add_task("GPU section", total=2 * 2 * len(plan.sizes))

        def on_phase(name: str) -> None:
            prog.update(task, description=name)
            prog.advance(task)

        try:
            gpu.GpuRunner(plan, emit, on_phase).run()
        except (StoreError, RuntimeError, MemoryError) as e:
            # e.g. a segment larger than memory, torch.cuda.OutOfMemoryError: one line.
            Console(stderr=True).print(f"[red]error:[/] {type(e).__name__}: {e}",
                                       soft_wrap=True)
            raise typer.Exit(1) from None
    if not as_json:
        _finish(records, False)


@bench_app.callback(invoke_without_command=True)
def bench(ctx: typer.Context,
          sizes: Optional[str] = typer.Option(None, help="Value sizes, comma separated "
                                              "(default 4K,64K,1M,4M,16M)."),
          seconds: Optional[float] = typer.Option(None, min=0.01, help="Seconds per phase "
                                                  "(default 0.3)."),
          json_out: bool = typer.Option(False, "--json", help="JSON Lines on stdout, one "
                                        "object per result (progress on stderr)."),
          device: str = typer.Option("cpu", help=DEVICE_HELP)) -> None:
    """Quick put/get benchmark of the embedded store, next to the memcpy ceiling."""
    if ctx.invoked_subcommand is not None:
        return
    if _device(device) != "cpu":
        _run_gpu(_device(device), _sizes(sizes), seconds, json_out)
        return
    plan = quick_plan(sizes=_sizes(sizes), seconds=seconds,
                      small_seconds=seconds if seconds is not None else None)
    _finish(_run(plan, json_out), json_out)


@bench_app.command("store")
def bench_store(
        sizes: Optional[str] = typer.Option(None, help="Value sizes (default 4K,64K,1M,4M,16M)."),
        seconds: Optional[float] = typer.Option(None, min=0.01, help="Seconds per throughput "
                                                "and batch phase (default 3)."),
        small_seconds: Optional[float] = typer.Option(None, min=0.01, help="Seconds per "
                                                      "small-op phase (default min(2, seconds))."),
        ws_mib: Optional[int] = typer.Option(None, min=1, help="Working set per phase, MiB "
                                             "(default 512)."),
        seg_mib: Optional[int] = typer.Option(None, min=16, help="Segment capacity, MiB "
                                              "(default 1536)."),
        max_gib: Optional[float] = typer.Option(None, min=0.001, help="Byte cap per "
                                                "throughput phase, GiB (default 4)."),
        quick: bool = typer.Option(False, "--quick", help="The anchor's quick settings: "
                                   "4K,1M,16M, 0.5 s phases, 256 MiB working set."),
        master: Optional[str] = typer.Option(None, help="Cluster master address: adds the "
                                             "remote (segment-less client) column."),
        transport: str = typer.Option("shm", help="Remote column transport on one host: shm "
                                      "(memfd mapping) or tcp (as across hosts; like Mooncake's)."),
        compare: Optional[str] = typer.Option(None, help="'mooncake': also run the Mooncake "
                                              "Store anchor with the same workload."),
        mooncake_dir: Optional[Path] = typer.Option(None, help="Anchor directory (default "
                                                    "../shared/anchors/mooncake)."),
        mooncake_venv: Optional[Path] = typer.Option(None, help="Anchor venv (default "
                                                     "<anchor>/.venv)."),
        no_warmup: bool = typer.Option(False, "--no-warmup", help="Do not touch the segment's "
                                       "pages before timing."),
        rounds: int = typer.Option(1, min=1, max=9, help="Run the whole benchmark this many "
                                   "times (with --compare: ours and Mooncake alternately) and "
                                   "report each row's median round, with the range of the "
                                   "per-round ratios; the noise of a shared machine then "
                                   "shows instead of deciding the ratio."),
        json_out: bool = typer.Option(False, "--json", help="JSON Lines on stdout."),
        device: str = typer.Option("cpu", help=DEVICE_HELP)) -> None:
    """The Mooncake anchor's workload against our store; --compare mooncake runs both."""
    if _device(device) != "cpu":
        # The store run's longer phases; the anchor has no GPU section to compare with.
        _run_gpu(_device(device), _sizes(sizes), seconds or 3.0, json_out,
                 ws_mib=ws_mib, seg_mib=seg_mib, max_gib=max_gib, tag="store-gpu")
        return
    if compare is not None and compare.lower() != "mooncake":
        raise typer.BadParameter(f"unknown comparison {compare!r} (only 'mooncake')",
                                 param_hint="--compare")
    q = QUICK_ANCHOR if quick else {}
    plan = store_plan(sizes=_sizes(sizes or q.get("sizes")), seconds=seconds or q.get("seconds"),
                      small_seconds=small_seconds, ws_mib=ws_mib or q.get("ws_mib"),
                      seg_mib=seg_mib, max_gib=max_gib, master=master, transport=transport,
                      warmup=False if no_warmup else None)
    anchor = None
    err = Console(stderr=True)
    if compare:
        anchor, why = mooncake_compare.find(mooncake_dir, mooncake_venv)
        if anchor is None:
            err.print(f"[yellow]{why}[/]", soft_wrap=True)
    if rounds == 1:
        records = _run(plan, json_out)
        theirs = _run_anchor(anchor, plan, json_out, err) if anchor else None
    else:
        records, theirs = _alternate(plan, rounds, anchor, json_out, err)
    _finish(records, json_out, theirs, None if plan.remote else REMOTE_NOTE)


def _alternate(plan: Plan, rounds: int, anchor: Optional[mooncake_compare.Anchor],
               as_json: bool, err: Console) -> tuple[list[dict], Optional[list[dict]]]:
    """Ours and the anchor in turn, `rounds` times each, folded into median rows (JSON lines
    are the folded rows, printed at the end). The anchor's side is dropped when one of its
    rounds fails: a median of fewer rounds than ours would pair the wrong ones."""
    ours: list[list[dict]] = []
    theirs: Optional[list[list[dict]]] = [] if anchor else None
    for i in range(rounds):
        label = f"round {i + 1}/{rounds}"
        ours.append(_run(plan, False, f"mooncake_store, {label}"))
        if theirs is not None:
            got = _run_anchor(anchor, plan, False, err, f"Mooncake anchor, {label}")
            theirs = None if got is None else theirs + [got]
    records = bench_rounds.merge(ours)
    merged = bench_rounds.merge(theirs) if theirs else None
    if as_json:
        for rec in records + (merged or []):
            print(json.dumps(rec), flush=True)
    return records, merged


def _run_anchor(anchor: mooncake_compare.Anchor, plan: Plan, as_json: bool,
                err: Console, label: str = "Mooncake anchor (bench.sh)") -> Optional[list[dict]]:
    """Run the anchor after ours (never both at once); None when it fails."""
    total = count_phases(plan) * 3
    with _progress(total) as prog:
        task = prog.add_task(label, total=total)
        try:
            theirs = mooncake_compare.run(anchor, plan, lambda: prog.advance(task))
        except mooncake_compare.AnchorError as e:
            err.print(f"[red]Mooncake run failed:[/] {e}", soft_wrap=True)
            return None
    if as_json:
        for rec in theirs:
            print(json.dumps(rec), flush=True)
    return theirs
