"""Prefix-reuse demo: a real (tiny, random-weight) Llama skips the prefill of a cached prefix."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mooncake_store import InvalidParams, Store  # noqa: E402
from mooncake_store.integrations import demo as D  # noqa: E402
from mooncake_store.integrations.kv import BlockLayout, KVConnector, PagedKV  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=256,
            prompt_tokens=100, suffix_tokens=8, block_size=16, repeats=1)


@pytest.mark.parametrize("layout", ["per_layer", "stacked"])
def test_cached_prefix_logits_match_full_recompute(layout):
    r = D.run_demo(D.DemoConfig(layout=layout, **TINY))
    assert r.tokens_cached == 96                       # 6 full blocks of the 100-token P
    assert r.tokens_prefilled == 108 - 96
    assert r.blocks_saved == 6
    head_dim = 64 // 4
    block_bytes = 2 * 2 * 16 * 2 * head_dim * 4         # layers * K/V * block * heads * dim * fp32
    assert r.bytes_saved == r.bytes_loaded == 6 * block_bytes
    assert r.tolerance == 1e-4
    assert r.max_abs_diff <= 1e-4 and r.ok
    assert set(r.timings["max_abs_diff"]) == {"sequential", "layerwise"}


def test_bfloat16_model_and_cache():
    r = D.run_demo(D.DemoConfig(dtype="bfloat16", **TINY))
    assert r.tokens_cached == 96 and r.tolerance == 5e-2
    assert r.bytes_loaded == 6 * (2 * 2 * 16 * 2 * 16 * 2)  # 2-byte elements
    assert r.ok


@pytest.fixture(scope="module")
def served():
    """A tiny model, P's blocks saved in a store, and what request B needs."""
    cfg = D.DemoConfig(**TINY)
    model = D.build_model(cfg)
    g = torch.Generator().manual_seed(7)
    full = torch.randint(0, cfg.vocab, (cfg.prompt_tokens + cfg.suffix_tokens,), generator=g)
    lay = BlockLayout(cfg.layers, cfg.block_size, cfg.kv_heads, cfg.hidden // cfg.heads,
                      torch.float32)
    with Store(capacity="64MB") as store, torch.inference_mode():
        kv_a = PagedKV.empty(lay, 32)
        table_a = torch.randperm(32, generator=g)[:8].tolist()
        _, cache = D.forward(model, full[None, :cfg.prompt_tokens])
        D.dense_to_paged(kv_a, D.cache_layers(cache), kv_a.block_ids(table_a, 6))
        conn_a = KVConnector(store, kv_a, model="tiny")
        assert conn_a.save(full[:cfg.prompt_tokens].tolist(), table_a) == 6
        ref, _ = D.forward(model, full[None])
        yield dict(model=model, full=full, lay=lay, store=store, ref=ref, conn_a=conn_a)


@pytest.mark.parametrize("overlap", [False, True])
def test_corrupted_cached_block_is_detected_by_the_logits_check(served, overlap):
    """The check can fail: wrong KV in one cached block moves the logits past tolerance."""
    s = served
    with torch.inference_mode():
        kv_b = PagedKV.empty(s["lay"], 32)
        conn_b = KVConnector(s["store"], kv_b, model="tiny")
        table_b = list(range(31, 23, -1))
        logits, n = D.serve_cached(s["model"], conn_b, s["full"], table_b, overlap=overlap)
        assert n == 96 and float((logits - s["ref"]).abs().max()) <= 1e-4
        key = s["conn_a"].keys(s["full"][:96].tolist())[2]
        good = s["store"].get(key)
        bad = torch.frombuffer(bytearray(good), dtype=torch.float32) + 0.5
        s["store"].upsert(key, bad.numpy().tobytes())
        try:
            logits, n = D.serve_cached(s["model"], conn_b, s["full"], table_b, overlap=overlap)
        finally:
            s["store"].upsert(key, good)
        assert n == 96 and float((logits - s["ref"]).abs().max()) > 1e-4


def test_other_model_namespace_misses_and_recomputes(served):
    s = served
    with torch.inference_mode():
        conn = KVConnector(s["store"], PagedKV.empty(s["lay"], 32), model="another-model")
        logits, n = D.serve_cached(s["model"], conn, s["full"], list(range(8)), overlap=True)
    assert n == 0
    assert float((logits - s["ref"]).abs().max()) <= 1e-4


def test_bad_demo_config_is_rejected():
    with pytest.raises(InvalidParams, match="kv_heads"):
        D.run_demo(D.DemoConfig(**(TINY | dict(heads=4, kv_heads=3))))
    with pytest.raises(InvalidParams, match="prompt_tokens"):
        D.run_demo(D.DemoConfig(**(TINY | dict(prompt_tokens=8))))
    with pytest.raises(InvalidParams, match="layout"):
        D.run_demo(D.DemoConfig(**(TINY | dict(layout="nhd"))))


def _cli(*args: str):
    from typer.testing import CliRunner

    from mooncake_store.cli.main import app

    return CliRunner().invoke(app, list(args))


TINY_ARGS = ["--layers", "2", "--hidden", "64", "--heads", "4", "--kv-heads", "2",
             "--intermediate", "128", "--vocab", "256", "--prompt-tokens", "100",
             "--suffix-tokens", "8", "--repeats", "1", "--device", "cpu"]


def test_cli_demo_table_output():
    p = _cli("demo", *TINY_ARGS)
    assert p.exit_code == 0, p.output
    assert "TTFT full recompute" in p.stdout and "OK: cached-prefix logits match" in p.stdout


def test_cli_demo_json():
    p = _cli("demo", *TINY_ARGS, "--layout", "stacked", "--json")
    assert p.exit_code == 0, p.output
    out = json.loads(p.stdout)
    assert out["ok"] is True and out["tokens_cached"] == 96
    assert out["config"]["layout"] == "stacked"


def test_cli_demo_bad_input_exits_with_message():
    p = _cli("demo", *TINY_ARGS, "--dtype", "int8")
    assert p.exit_code == 2
    assert "error: dtype must be one of" in p.stderr
    assert isinstance(p.exception, SystemExit)   # a clean exit, not an escaped exception


def test_example_script_runs():
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, str(ROOT / "examples" / "prefix_reuse.py"), "--tiny"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "logits match" in p.stdout
