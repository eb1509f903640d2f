"""Prefix-reuse demo: a real transformer skips the prefill of a cached prefix.

1. Build a Llama-style decoder from a `transformers` config with random weights
   (seeded; nothing is downloaded).
2. Request A: prefill prompt P, copy its per-layer K/V into a vLLM-style paged cache
   at a random block table, and save the full blocks through the `KVConnector`.
3. Request B = P + suffix, served on a fresh (zeroed) paged cache with another block
   table: load P's cached blocks from the store, rebuild the model's cache object
   from them and prefill only the rest. Layer-wise: layer i of the suffix prefill
   waits only for layer i of the load, which continues in a background thread.
4. Check B's next-token logits against a full recompute of P + suffix and report
   TTFT with and without the cache and the bytes moved.

The paged -> dense copy in step 3 is demo glue: a paged-attention engine reads the
paged blocks directly, while a `transformers` model wants one dense tensor per layer.
"""
from __future__ import annotations

import inspect
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from ..errors import InvalidParams
from .kv import PER_LAYER, LAYOUTS, BlockLayout, KVConnector, PagedKV

# Max |logit difference| accepted between cached and full prefill, per dtype. fp32
# differs only by summation order of the attention over a split sequence.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class DemoConfig:
    """Model geometry and request shape. Defaults run in seconds on a laptop CPU."""

    layers: int = 8
    hidden: int = 512
    heads: int = 8
    kv_heads: int = 4
    intermediate: int = 1376
    vocab: int = 8192
    prompt_tokens: int = 2000
    suffix_tokens: int = 32
    block_size: int = 16
    layout: str = PER_LAYER
    dtype: str = "float32"
    device: str = "cpu"
    repeats: int = 3
    overlap: bool = True
    threads: int = 0          # torch intra-op threads for the run; 0 keeps torch's setting
    seed: int = 0
    model_name: str = "demo-llama"

    def check(self) -> None:
        for name in ("layers", "hidden", "heads", "kv_heads", "intermediate", "vocab",
                     "prompt_tokens", "suffix_tokens", "block_size", "repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidParams(f"{name} must be a positive int; got {value!r}")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise InvalidParams(f"hidden ({self.hidden}) must divide by heads ({self.heads}) "
                                f"and heads by kv_heads ({self.kv_heads})")
        if self.prompt_tokens < self.block_size:
            raise InvalidParams(f"prompt_tokens ({self.prompt_tokens}) must be at least one "
                                f"block ({self.block_size})")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) \
                or self.threads < 0:
            raise InvalidParams(f"threads must be an int >= 0; got {self.threads!r}")
        if self.layout not in LAYOUTS:
            raise InvalidParams(f"layout must be one of {LAYOUTS}; got {self.layout!r}")
        if self.dtype not in DTYPES:
            raise InvalidParams(f"dtype must be one of {sorted(DTYPES)}; got {self.dtype!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise InvalidParams("device is cuda but torch sees no CUDA device")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass
class DemoResult:
    config: dict
    tokens_total: int
    tokens_cached: int
    tokens_prefilled: int
    blocks_saved: int
    bytes_saved: int
    bytes_loaded: int
    ttft_full_s: float
    ttft_cached_s: float
    ttft_cached_sequential_s: float
    load_s: float
    max_abs_diff: float
    tolerance: float
    same_next_token: bool
    ttft_floor_s: float = 0.0     # rest-of-prompt prefill over a ready cache (compute only)
    memcpy_s: float = 0.0         # one torch copy of the loaded bytes (load ceiling)
    timings: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.tokens_cached > 0 and self.max_abs_diff <= self.tolerance

    @property
    def speedup(self) -> float:
        return self.ttft_full_s / self.ttft_cached_s if self.ttft_cached_s > 0 else float("inf")

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(ok=self.ok, speedup=self.speedup)
        return out


# ---------------------------------------------------------------- model ---

def build_model(cfg: DemoConfig) -> Any:
    """A Llama-style causal LM with seeded random weights, in eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    config = LlamaConfig(vocab_size=cfg.vocab, hidden_size=cfg.hidden,
                         intermediate_size=cfg.intermediate, num_hidden_layers=cfg.layers,
                         num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
                         max_position_embeddings=max(2048, cfg.prompt_tokens + cfg.suffix_tokens),
                         attn_implementation="sdpa")
    # Allocate the weights where and as they will live: a 7B config initialised in
    # float32 on the host first would need ~28 GB and minutes.
    default = torch.get_default_dtype()
    torch.set_default_dtype(cfg.torch_dtype)
    try:
        with torch.device(cfg.device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def _cache_kwarg(model: Any) -> str:
    # transformers 5 renamed `past_key_values` to `cache`.
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def forward(model: Any, input_ids: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
    """Prefill `input_ids` after `cache`; returns (last-position logits, cache)."""
    from transformers import DynamicCache

    cache = DynamicCache() if cache is None else cache
    out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1,
                **{_cache_kwarg(model): cache})
    new_cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    return out.logits[0, -1].float(), new_cache


def cache_layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (K, V) tensors [1, kv_heads, seq, head_dim] of a DynamicCache."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))  # transformers 4.x


def make_cache(kvs: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """A DynamicCache holding `kvs` by reference (no copy), so they can be swapped later."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    if hasattr(cache, "layers") and hasattr(DynamicLayer, "lazy_initialization"):
        for k, v in kvs:
            layer = DynamicLayer()
            layer.lazy_initialization(k, v)
            layer.keys, layer.values = k, v
            cache.layers.append(layer)
        return cache
    return DynamicCache.from_legacy_cache(tuple(kvs))  # transformers 4.x: copies


def _set_cache_layer(cache: Any, i: int, k: torch.Tensor, v: torch.Tensor) -> None:
    if hasattr(cache, "layers"):
        cache.layers[i].keys, cache.layers[i].values = k, v
    else:
        cache.key_cache[i], cache.value_cache[i] = k, v


def decoder_layers(model: Any) -> Any:
    return model.get_decoder().layers


# ------------------------------------------------------- dense <-> paged ---

def dense_to_paged(kv: PagedKV, layers: list[tuple[torch.Tensor, torch.Tensor]],
                   ids: torch.Tensor) -> None:
    """Copy the first len(ids) full blocks of each layer's dense K/V into paged blocks."""
    bs = kv.block_layout.block_size
    n = ids.numel()
    for i, (k, v) in enumerate(layers):
        for j, t in enumerate((k, v)):
            # [1, H, T, D] -> [n, bs, H, D]
            blocks = t[0, :, :n * bs].transpose(0, 1).reshape(n, bs, t.shape[1], t.shape[3])
            kv.layers[i][j].index_copy_(0, ids, blocks)


def paged_to_dense(kv: PagedKV, i: int, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer i's K and V of blocks `ids` as dense [1, H, n*block_size, D] tensors."""
    lay = kv.block_layout
    out = []
    for j in range(2):
        blocks = kv.layers[i][j].index_select(0, ids)      # [n, bs, H, D]
        out.append(blocks.reshape(-1, lay.num_kv_heads, lay.head_dim)
                   .transpose(0, 1).unsqueeze(0).contiguous())
    return out[0], out[1]


# ------------------------------------------------------------- serving ---

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def serve_cached(model: Any, conn: KVConnector, tokens: torch.Tensor, table: list[int],
                 overlap: bool) -> tuple[torch.Tensor, int]:
    """Serve `tokens` reusing cached prefix blocks; returns (next-token logits, tokens cached).

    With `overlap`, the load runs in a background thread (a side stream on CUDA) and a
    pre-hook on decoder layer i waits only for layer i; otherwise load, then compute.
    """
    kv = conn.kv
    toks = tokens.tolist()
    if not overlap:
        n_tok = conn.load(toks, table)
        n = n_tok // conn.block_size
        ids = kv.block_ids(table, n)
        cache = make_cache([paged_to_dense(kv, i, ids) for i in range(kv.num_layers)])
        logits, _ = forward(model, tokens[None, n_tok:].to(kv.device), cache if n else None)
        return logits, n_tok

    handle = conn.start_load(toks, table)
    n = handle.num_blocks_requested
    if n == 0:
        handle.wait()
        return forward(model, tokens[None].to(kv.device))[0], 0
    ids = kv.block_ids(table, n)
    lay = kv.block_layout
    # Shape-only placeholders (no memory) so the cache reports the prefix length.
    ph = torch.empty(1, 1, 1, 1, dtype=lay.dtype, device=kv.device).expand(
        1, lay.num_kv_heads, n * lay.block_size, lay.head_dim)
    cache = make_cache([(ph, ph)] * kv.num_layers)

    def pre_hook(i: int) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            handle.wait_for_layer(i)
            _set_cache_layer(cache, i, *paged_to_dense(kv, i, ids))
        return hook

    hooks = [layer.register_forward_pre_hook(pre_hook(i))
             for i, layer in enumerate(decoder_layers(model))]
    try:
        logits, _ = forward(model, tokens[None, n * lay.block_size:].to(kv.device), cache)
    finally:
        for h in hooks:
            h.remove()
    got = handle.wait()
    if got != n * lay.block_size:
        raise RuntimeError(f"{n * lay.block_size} tokens promised by the lookup but only {got} "
                           "loaded (blocks evicted meanwhile); the request must be recomputed")
    return logits, got


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def run_demo(cfg: DemoConfig | None = None, store: Any = None) -> DemoResult:
    """Run the demo end to end (see the module docstring); returns the measurements."""
    cfg = cfg or DemoConfig()
    cfg.check()
    from .. import Store

    device = torch.device(cfg.device)
    model = build_model(cfg)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    prompt = torch.randint(0, cfg.vocab, (cfg.prompt_tokens,), generator=gen)
    full = torch.cat([prompt, torch.randint(0, cfg.vocab, (cfg.suffix_tokens,), generator=gen)])
    head_dim = cfg.hidden // cfg.heads
    lay = BlockLayout(cfg.layers, cfg.block_size, cfg.kv_heads, head_dim, cfg.torch_dtype)
    blocks_needed = -(-full.numel() // cfg.block_size)
    num_blocks = 2 * blocks_needed + 8
    own_store = store is None
    if own_store:
        store = Store(capacity=max(64 << 20, 2 * blocks_needed * lay.block_nbytes + (16 << 20)))
    threads = torch.get_num_threads()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        with torch.inference_mode():
            return _run(cfg, model, store, lay, prompt, full, num_blocks, device, gen)
    finally:
        torch.set_num_threads(threads)
        if own_store:
            store.close()


def _run(cfg: DemoConfig, model: Any, store: Any, lay: BlockLayout, prompt: torch.Tensor,
         full: torch.Tensor, num_blocks: int, device: torch.device,
         gen: torch.Generator) -> DemoResult:
    # Request A: prefill P and save its full blocks from a paged cache.
    kv_a = PagedKV.empty(lay, num_blocks, kind=cfg.layout, device=device)
    conn_a = KVConnector(store, kv_a, model=cfg.model_name)
    table_a = torch.randperm(num_blocks, generator=gen)[:num_blocks // 2].tolist()
    _, cache = forward(model, prompt[None].to(device))
    n_full = prompt.numel() // cfg.block_size
    dense_to_paged(kv_a, cache_layers(cache), kv_a.block_ids(table_a, n_full))
    blocks_saved = conn_a.save(prompt.tolist(), table_a)

    # Request B on a fresh cache and another block table: nothing but the store links them.
    kv_b = PagedKV.empty(lay, num_blocks, kind=cfg.layout, device=device)
    conn_b = KVConnector(store, kv_b, model=cfg.model_name)
    table_b = torch.randperm(num_blocks, generator=gen)[:num_blocks // 2].tolist()

    # Correctness first, each on a zeroed cache so the prefix can only come from the store.
    ref_logits, _ = forward(model, full[None].to(device))
    diffs = {}
    for mode, overlap in (("sequential", False), ("layerwise", cfg.overlap)):
        _zero(kv_b)
        logits, n_cached = serve_cached(model, conn_b, full, table_b, overlap=overlap)
        diffs[mode] = float((logits - ref_logits).abs().max())
    same_token = int(logits.argmax()) == int(ref_logits.argmax())

    # Then timings: the modes are interleaved within each repeat so that all of them see
    # the same background load (a shared machine drifts), and the median is reported.
    # Two references from the same run: "memcpy" copies the loaded bytes once (the
    # ceiling for the load), "floor" prefills the rest over a prebuilt dense cache
    # (the best TTFT a cache could give: compute only).
    toks = full.tolist()
    nbytes = n_cached // cfg.block_size * lay.block_nbytes
    src_b = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)
    dst_b = torch.empty_like(src_b).fill_(1)
    src_b.fill_(2)
    ids = kv_b.block_ids(table_b, n_cached // cfg.block_size)
    dense = [paged_to_dense(kv_b, i, ids) for i in range(lay.num_layers)]
    rest = full[None, n_cached:].to(device)
    modes = {
        "full": lambda: forward(model, full[None].to(device)),
        "floor": lambda: forward(model, rest, make_cache(dense) if n_cached else None),
        "memcpy": lambda: dst_b.copy_(src_b),
        "load": lambda: conn_b.load(toks, table_b),
        "sequential": lambda: serve_cached(model, conn_b, full, table_b, overlap=False),
        "layerwise": lambda: serve_cached(model, conn_b, full, table_b, overlap=cfg.overlap),
    }
    samples: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(cfg.repeats):
        for name, fn in modes.items():
            samples[name].append(_timed(fn, device))
    med = {name: statistics.median(ts) for name, ts in samples.items()}
    ttft_full, load_s, ttft_seq, ttft_ovl = (med[k] for k in
                                             ("full", "load", "sequential", "layerwise"))
    return DemoResult(
        config=asdict(cfg), tokens_total=full.numel(), tokens_cached=n_cached,
        tokens_prefilled=full.numel() - n_cached, blocks_saved=blocks_saved,
        bytes_saved=conn_a.stats.bytes_saved,
        bytes_loaded=n_cached // cfg.block_size * lay.block_nbytes,
        ttft_full_s=ttft_full, ttft_cached_s=ttft_ovl, ttft_cached_sequential_s=ttft_seq,
        load_s=load_s, max_abs_diff=max(diffs.values()), tolerance=TOLERANCE[cfg.torch_dtype],
        same_next_token=same_token,
        ttft_floor_s=med["floor"], memcpy_s=med["memcpy"],
        timings={"repeats": cfg.repeats, "statistic": "median, modes interleaved",
                 "samples_s": samples, "max_abs_diff": diffs})


def _zero(kv: PagedKV) -> None:
    for t in kv.layers:
        t.zero_()
