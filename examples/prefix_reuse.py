"""Prefix reuse, step by step: save a prompt's KV blocks, then serve a longer request from them.

    python examples/prefix_reuse.py            # a small Llama-style model, ~1000-token prompt
    python examples/prefix_reuse.py --tiny     # seconds, for CI

`mstore demo` runs the same flow with timings; this file shows the calls.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from mooncake_store import Store  # noqa: E402
from mooncake_store.integrations.demo import (  # noqa: E402
    DemoConfig,
    build_model,
    cache_layers,
    dense_to_paged,
    forward,
    serve_cached,
)
from mooncake_store.integrations.kv import BlockLayout, KVConnector, PagedKV  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model and a 100-token prompt")
    args = ap.parse_args()
    cfg = (DemoConfig(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=256,
                      prompt_tokens=100, suffix_tokens=8)
           if args.tiny else DemoConfig(prompt_tokens=1000))
    model = build_model(cfg)                                  # random weights, seeded
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, cfg.vocab, (cfg.prompt_tokens,), generator=g)
    request = torch.cat([prompt, torch.randint(0, cfg.vocab, (cfg.suffix_tokens,), generator=g)])

    # One block of the store = every layer's K and V for block_size tokens.
    layout = BlockLayout(cfg.layers, cfg.block_size, cfg.kv_heads, cfg.hidden // cfg.heads,
                         torch.float32)
    num_blocks = 2 * (request.numel() // cfg.block_size + 1)

    with Store(capacity="256MB") as store, torch.inference_mode():
        # Engine 1 serves the prompt and saves its full blocks.
        kv1 = PagedKV.empty(layout, num_blocks)               # [2, blocks, 16, heads, dim] x L
        table1 = torch.randperm(num_blocks, generator=g).tolist()
        _, cache = forward(model, prompt[None])
        dense_to_paged(kv1, cache_layers(cache), kv1.block_ids(table1, len(prompt) // 16))
        saver = KVConnector(store, kv1, model="example-llama")
        print(f"saved {saver.save(prompt.tolist(), table1)} blocks "
              f"({saver.stats.bytes_saved / 2**20:.1f} MiB)")

        # Engine 2 (fresh cache, other blocks) serves prompt + suffix.
        kv2 = PagedKV.empty(layout, num_blocks, kind="stacked")
        loader = KVConnector(store, kv2, model="example-llama")
        table2 = torch.randperm(num_blocks, generator=g).tolist()
        print(f"store has {loader.lookup(request.tolist())} of {request.numel()} tokens cached")

        t0 = time.perf_counter()
        logits, cached = serve_cached(model, loader, request, table2, overlap=True)
        t_cached = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref, _ = forward(model, request[None])
        t_full = time.perf_counter() - t0

    diff = float((logits - ref).abs().max())
    print(f"loaded {cached} tokens, prefilled {request.numel() - cached}; "
          f"TTFT {t_cached * 1e3:.1f} ms vs {t_full * 1e3:.1f} ms full recompute")
    if diff > 1e-4:
        raise SystemExit(f"MISMATCH: max |logit diff| {diff:.3g} > 1e-4")
    print(f"logits match the full recompute (max |diff| {diff:.2g} <= 1e-4, float32)")


if __name__ == "__main__":
    main()
