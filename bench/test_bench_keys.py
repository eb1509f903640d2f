"""Microbenchmark: block-key hashing cost per token (run: pytest bench/test_bench_keys.py).

The ceiling is one hash call over the whole little-endian token buffer: the
least any chained scheme can cost. Compare ratios within one run; the machine
is shared, so absolute numbers are noisy.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import xxhash

from mooncake_store.keys import KeySpec, Namespace, sglang_style_keys, vllm_style_keys

N_TOKENS = 32 * 1024
NS = Namespace(model="meta-llama/Llama-3.1-8B-Instruct", dtype="bfloat16", tp_size=8, tp_rank=3)


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 128_256, N_TOKENS, dtype=np.int64)


def _per_token(benchmark, name: str) -> None:
    benchmark.extra_info["tokens"] = N_TOKENS
    benchmark.extra_info["what"] = name
    mean = benchmark.stats.stats.mean if benchmark.stats else None
    if mean:
        benchmark.extra_info["ns_per_token"] = round(mean / N_TOKENS * 1e9, 2)


@pytest.mark.parametrize("hash_name", ["xxh3_128", "sha256"])
@pytest.mark.parametrize("block_size", [16, 256])
def test_keys_numpy(benchmark, tokens, hash_name, block_size):
    spec = KeySpec(NS, block_size, hash_name)
    keys = benchmark(spec.keys, tokens)
    assert len(keys) == N_TOKENS // block_size
    _per_token(benchmark, f"KeySpec.keys numpy {hash_name} B={block_size}")


def test_keys_python_list(benchmark, tokens):
    spec = KeySpec(NS, 256)
    as_list = tokens.tolist()
    keys = benchmark(spec.keys, as_list)
    assert len(keys) == N_TOKENS // 256
    _per_token(benchmark, "KeySpec.keys list xxh3_128 B=256")


@pytest.mark.parametrize("hash_name", ["xxh3_128", "sha256"])
def test_ceiling_one_hash_over_all_tokens(benchmark, tokens, hash_name):
    data = tokens.astype("<u4").tobytes()
    fn = xxhash.xxh3_128_digest if hash_name == "xxh3_128" else (lambda b: hashlib.sha256(b).digest())
    benchmark(fn, data)
    _per_token(benchmark, f"ceiling: one {hash_name} over {len(data)} bytes")


def test_sglang_style(benchmark, tokens):
    assert len(benchmark(sglang_style_keys, tokens, 64)) == N_TOKENS // 64
    _per_token(benchmark, "sglang_style_keys page 64")


def test_vllm_style(benchmark, tokens):
    assert len(benchmark(vllm_style_keys, tokens, 16)) == N_TOKENS // 16
    _per_token(benchmark, "vllm_style_keys block 16")
