"""`mstore demo`: prefix reuse with a real transformer (see integrations/demo.py)."""
from __future__ import annotations

import json

import typer

from .main import app

MiB = 1 << 20


@app.command("demo")
def demo(
    layers: int = typer.Option(8, help="Decoder layers."),
    hidden: int = typer.Option(512, help="Hidden size."),
    heads: int = typer.Option(8, help="Attention heads."),
    kv_heads: int = typer.Option(4, help="KV heads (grouped-query attention)."),
    intermediate: int = typer.Option(1376, help="MLP size."),
    vocab: int = typer.Option(8192, help="Vocabulary size."),
    prompt_tokens: int = typer.Option(1024, help="Tokens of the shared prompt P."),
    suffix_tokens: int = typer.Option(32, help="New tokens after P in the second request."),
    block_size: int = typer.Option(16, help="Tokens per KV block."),
    layout: str = typer.Option("per_layer", help="Paged cache layout: per_layer or stacked."),
    dtype: str = typer.Option("float32", help="float32, float16 or bfloat16."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto."),
    repeats: int = typer.Option(3, help="Timed runs per measurement (median reported)."),
    overlap: bool = typer.Option(True, help="Layer-wise load overlapping the suffix prefill."),
    threads: int = typer.Option(0, help="torch intra-op threads (0: torch's default). "
                                "1 gives steadier timings on a busy machine."),
    seed: int = typer.Option(0, help="Seed for weights and tokens."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Serve P + suffix reusing P's KV from the store; check logits against a full recompute."""
    import torch

    from ..errors import StoreError
    from ..integrations.demo import DemoConfig, run_demo

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = DemoConfig(layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
                     intermediate=intermediate, vocab=vocab, prompt_tokens=prompt_tokens,
                     suffix_tokens=suffix_tokens, block_size=block_size, layout=layout,
                     dtype=dtype, device=device, repeats=repeats, overlap=overlap,
                     threads=threads, seed=seed)
    try:
        result = run_demo(cfg)
    except StoreError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
    else:
        _print(result)
    if not result.ok:
        raise typer.Exit(1)


def _print(r) -> None:  # noqa: ANN001 - DemoResult
    from rich.console import Console
    from rich.table import Table

    c = r.config
    console = Console()
    console.print(f"model: Llama-style, {c['layers']} layers, hidden {c['hidden']}, "
                  f"{c['heads']} heads / {c['kv_heads']} kv heads, {c['dtype']} on {c['device']}, "
                  f"random weights (seed {c['seed']})")
    console.print(f"request: {r.tokens_total} tokens = P {c['prompt_tokens']} + suffix "
                  f"{c['suffix_tokens']}; block {c['block_size']}, layout {c['layout']}")
    t = Table(show_header=True, header_style="bold")
    t.add_column("")
    t.add_column("value", justify="right")
    t.add_row("blocks saved (request P)", f"{r.blocks_saved} ({r.bytes_saved / MiB:.1f} MiB)")
    t.add_row("tokens loaded / prefilled", f"{r.tokens_cached} / {r.tokens_prefilled}")
    t.add_row("bytes loaded", f"{r.bytes_loaded / MiB:.1f} MiB")
    t.add_row("TTFT full recompute", f"{r.ttft_full_s * 1e3:.1f} ms")
    mode = "layer-wise" if c["overlap"] else "sequential"
    t.add_row(f"TTFT with cache ({mode})", f"{r.ttft_cached_s * 1e3:.1f} ms")
    t.add_row("TTFT with cache (load, then compute)", f"{r.ttft_cached_sequential_s * 1e3:.1f} ms")
    t.add_row("TTFT floor (rest of prompt over a ready cache)", f"{r.ttft_floor_s * 1e3:.1f} ms")
    t.add_row("store -> paged cache load", f"{r.load_s * 1e3:.1f} ms "
              f"({r.bytes_loaded / max(r.load_s, 1e-9) / 1e9:.2f} GB/s)")
    t.add_row("memcpy of the same bytes (ceiling)", f"{r.memcpy_s * 1e3:.1f} ms "
              f"({r.bytes_loaded / max(r.memcpy_s, 1e-9) / 1e9:.2f} GB/s)")
    t.add_row("TTFT speedup", f"{r.speedup:.2f}x")
    t.add_row("max |logit diff| vs full", f"{r.max_abs_diff:.3g} (tolerance {r.tolerance:g})")
    t.add_row("same next token", "yes" if r.same_next_token else "no")
    console.print(t)
    console.print(f"[bold {'green' if r.ok else 'red'}]"
                  f"{'OK' if r.ok else 'MISMATCH'}[/]: cached-prefix logits "
                  f"{'match' if r.ok else 'do not match'} the full recompute "
                  f"(median of {c['repeats']} timed runs)")
