"""Paged-KV connector and the vLLM-shaped adapter, against a real embedded Store."""
from __future__ import annotations

import types

import pytest

torch = pytest.importorskip("torch")

from mooncake_store import InvalidParams, Store  # noqa: E402
from mooncake_store.integrations.kv import (  # noqa: E402
    PER_LAYER,
    STACKED,
    BlockLayout,
    KVConnector,
    PagedKV,
)

LAYOUT = BlockLayout(num_layers=3, block_size=4, num_kv_heads=2, head_dim=8,
                     dtype=torch.float32)
NUM_BLOCKS = 48


@pytest.fixture
def store():
    with Store(capacity="64MB") as s:
        yield s


def random_kv(kind: str, seed: int, layout: BlockLayout = LAYOUT) -> PagedKV:
    g = torch.Generator().manual_seed(seed)
    kv = PagedKV.empty(layout, NUM_BLOCKS, kind=kind)
    for t in kv.layers:
        t.copy_(torch.randn(t.shape, generator=g).to(layout.dtype))
    return kv


def random_table(seed: int, n: int = 12) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(NUM_BLOCKS, generator=g)[:n].tolist()


def tokens(n: int, start: int = 1000) -> list[int]:
    return list(range(start, start + n))


def assert_blocks_equal(src: PagedKV, src_table, dst: PagedKV, dst_table, n: int) -> None:
    for layer in range(src.num_layers):
        for b in range(n):
            assert torch.equal(src.layers[layer][:, src_table[b]],
                               dst.layers[layer][:, dst_table[b]]), (layer, b)


@pytest.mark.parametrize("src_kind", [PER_LAYER, STACKED])
@pytest.mark.parametrize("dst_kind", [PER_LAYER, STACKED])
def test_round_trip_random_block_tables(store, src_kind, dst_kind):
    src = random_kv(src_kind, seed=1)
    dst = PagedKV.empty(LAYOUT, NUM_BLOCKS, kind=dst_kind)
    a, b = random_table(2), random_table(3)
    toks = tokens(4 * 10 + 3)                      # 10 full blocks + a partial one
    assert KVConnector(store, src, model="m").save(toks, a) == 10
    assert KVConnector(store, dst, model="m").load(toks, b) == 40
    assert_blocks_equal(src, a, dst, b, 10)
    # Blocks outside the loaded ones are untouched.
    untouched = sorted(set(range(NUM_BLOCKS)) - set(b[:10]))
    assert all(float(t[:, untouched].abs().sum()) == 0 for t in dst.layers)


def test_stored_value_is_one_contiguous_object_per_block(store):
    src = random_kv(PER_LAYER, seed=4)
    conn = KVConnector(store, src, model="m")
    toks, table = tokens(8), random_table(5)
    conn.save(toks, table)
    keys = conn.keys(toks)
    assert len(keys) == 2 and all(store.size(k) == LAYOUT.block_nbytes for k in keys)
    raw = torch.frombuffer(bytearray(store.get(keys[1])), dtype=torch.float32)
    expect = torch.stack([src.layers[i][:, table[1]] for i in range(3)])  # [L, 2, B, H, D]
    assert torch.equal(raw.view(LAYOUT.block_shape), expect)


def test_save_skips_blocks_already_present(store):
    conn = KVConnector(store, random_kv(PER_LAYER, 6), model="m")
    table = random_table(7)
    assert conn.save(tokens(16), table) == 4
    assert conn.save(tokens(16), table) == 0
    assert conn.save(tokens(24), table) == 2       # only the two new blocks
    assert conn.stats.blocks_skipped == 8 and conn.stats.blocks_saved == 6


def test_partial_prefix_hit(store):
    src = random_kv(STACKED, seed=8)
    conn = KVConnector(store, src, model="m")
    shared = tokens(12)
    conn.save(shared + tokens(8, start=5), random_table(9))     # 5 blocks, 3 shared
    other = shared + tokens(10, start=77)                      # diverges in block 3
    dst = PagedKV.empty(LAYOUT, NUM_BLOCKS)
    loader = KVConnector(store, dst, model="m")
    assert loader.lookup(other) == 12
    assert loader.load(other, random_table(10)) == 12
    # A change inside block 1 breaks the chain from block 1 on.
    changed = list(other)
    changed[5] += 1
    assert loader.lookup(changed) == 4
    # A shorter block table caps the load.
    assert loader.load(shared + tokens(8, start=5), random_table(11, n=2)) == 8


def test_missing_middle_block_stops_the_prefix(store):
    conn = KVConnector(store, random_kv(PER_LAYER, 12), model="m")
    toks = tokens(20)
    conn.save(toks, random_table(13))
    store.remove(conn.keys(toks)[2], force=True)
    dst = KVConnector(store, PagedKV.empty(LAYOUT, NUM_BLOCKS), model="m")
    assert dst.load(toks, random_table(14)) == 8


def test_block_evicted_between_lookup_and_read(store):
    src = random_kv(PER_LAYER, 15)
    table = random_table(16)
    toks = tokens(20)
    conn = KVConnector(store, src, model="m")
    conn.save(toks, table)
    dst = PagedKV.empty(LAYOUT, NUM_BLOCKS)
    loader = KVConnector(store, dst, model="m")
    # The scheduler promised 5 blocks; block 3 vanishes before the worker reads.
    handle = loader.start_load(toks, random_table(17), num_tokens=20, background=False)
    store.remove(conn.keys(toks)[3], force=True)
    assert handle.wait() == 12


@pytest.mark.parametrize("change", [
    dict(model="other-model"),
    dict(tp_rank=1, tp_size=2),
    dict(tp_size=2),
    dict(revision="v2"),
    dict(lora="adapter-a"),
])
def test_namespace_isolation(store, change):
    toks, table = tokens(16), random_table(18)
    KVConnector(store, random_kv(PER_LAYER, 19), model="m").save(toks, table)
    kw = dict(model="m") | change
    other = KVConnector(store, PagedKV.empty(LAYOUT, NUM_BLOCKS), **kw)
    assert other.lookup(toks) == 0
    assert other.load(toks, table) == 0
    assert all(float(t.abs().sum()) == 0 for t in other.kv.layers)


@pytest.mark.parametrize("geometry", [
    dict(dtype=torch.float16),
    dict(num_kv_heads=4, head_dim=4),     # same bytes per block, different meaning
    dict(block_size=8),
    dict(num_layers=2),
])
def test_different_dtype_or_geometry_never_hits(store, geometry):
    toks = tokens(32)
    KVConnector(store, random_kv(PER_LAYER, 20), model="m").save(toks, random_table(21))
    layout = BlockLayout(**(dict(num_layers=3, block_size=4, num_kv_heads=2, head_dim=8,
                                 dtype=torch.float32) | geometry))
    other = KVConnector(store, PagedKV.empty(layout, NUM_BLOCKS), model="m")
    assert other.lookup(toks) == 0


@pytest.mark.parametrize("kind", [PER_LAYER, STACKED])
@pytest.mark.parametrize("background", [True, False])
def test_layerwise_load_makes_each_layer_ready_in_order(store, kind, background):
    src = random_kv(kind, 22)
    a, b = random_table(23), random_table(24)
    toks = tokens(36)
    KVConnector(store, src, model="m").save(toks, a)
    dst = PagedKV.empty(LAYOUT, NUM_BLOCKS, kind=kind)
    handle = KVConnector(store, dst, model="m").start_load(toks, b, background=background)
    for layer in range(LAYOUT.num_layers):
        handle.wait_for_layer(layer)
        for blk in range(9):
            assert torch.equal(dst.layers[layer][:, b[blk]], src.layers[layer][:, a[blk]])
    assert handle.wait() == 36 and handle.bytes_loaded == 9 * LAYOUT.block_nbytes


def test_load_layers_generator(store):
    src = random_kv(PER_LAYER, 25)
    toks, a, b = tokens(12), random_table(26), random_table(27)
    KVConnector(store, src, model="m").save(toks, a)
    dst = PagedKV.empty(LAYOUT, NUM_BLOCKS)
    conn = KVConnector(store, dst, model="m")
    seen = []
    for layer in conn.load_layers(toks, b):
        seen.append(layer)
        assert torch.equal(dst.layers[layer][:, b[0]], src.layers[layer][:, a[0]])
        if layer + 1 < LAYOUT.num_layers:   # later layers are not loaded yet
            assert float(dst.layers[layer + 1].abs().sum()) == 0
    assert seen == [0, 1, 2] and conn.last_num_tokens == 12


def test_layerwise_save_matches_bulk_save(store):
    src = random_kv(STACKED, 28)
    toks, a = tokens(16), random_table(29)
    conn = KVConnector(store, src, model="m")
    handle = conn.start_save(toks, a)
    with pytest.raises(InvalidParams, match="before save_layer"):
        partial = conn.start_save(tokens(16, start=9), a)
        partial.save_layer(0)
        partial.finish()
    for layer in range(LAYOUT.num_layers):
        handle.save_layer(layer)
    assert handle.finish() == 4
    dst = PagedKV.empty(LAYOUT, NUM_BLOCKS)
    b = random_table(30)
    assert KVConnector(store, dst, model="m").load(toks, b) == 16
    assert_blocks_equal(src, a, dst, b, 4)


def test_block_larger_than_the_store_is_counted_as_failed():
    big = BlockLayout(2, 64, 8, 128, torch.float32)      # 1 MiB per block
    with Store(capacity="512KB") as small:
        conn = KVConnector(small, PagedKV.empty(big, 4), model="m")
        assert conn.save(tokens(64 * 3), [0, 1, 2]) == 0
        assert conn.stats.blocks_failed == 3 and conn.lookup(tokens(64 * 3)) == 0


def test_overflowing_the_store_keeps_lookup_and_load_consistent():
    lay = BlockLayout(2, 64, 4, 64, torch.float32)       # 128 KiB per block
    with Store(capacity="1MB") as small:
        src = PagedKV.empty(lay, 16)
        for t in src.layers:
            t.normal_()
        toks = tokens(64 * 16)
        assert KVConnector(small, src, model="m").save(toks, list(range(16))) == 16
        dst = PagedKV.empty(lay, 16)
        loader = KVConnector(small, dst, model="m")
        hit = loader.lookup(toks)
        # It cannot all fit; saving tail-first keeps the head of the chain, so a prefix hits.
        assert 0 < hit < 64 * 16
        assert loader.load(toks, list(range(16))) == hit
        n = hit // 64
        assert all(torch.equal(s[:, :n], d[:, :n]) for s, d in zip(src.layers, dst.layers))


def test_bad_input_is_rejected_clearly(store):
    kv = PagedKV.empty(LAYOUT, NUM_BLOCKS)
    conn = KVConnector(store, kv, model="m")
    with pytest.raises(InvalidParams, match="block ids"):
        conn.save(tokens(8), [0, NUM_BLOCKS])
    with pytest.raises(InvalidParams, match="block_table has 1"):
        conn.save(tokens(8), [0])
    with pytest.raises(InvalidParams, match="multiple of 4"):
        conn.start_load(tokens(8), [0, 1], num_tokens=5)
    with pytest.raises(InvalidParams, match="model"):
        KVConnector(store, kv, model="")
    with pytest.raises(InvalidParams, match=r"\[2, blocks"):
        PagedKV([torch.zeros(3, 4, 4, 2, 8)])
    with pytest.raises(InvalidParams, match="differs from layer 0"):
        PagedKV([torch.zeros(2, 4, 4, 2, 8), torch.zeros(2, 4, 4, 2, 8, dtype=torch.float16)])
    with pytest.raises(InvalidParams, match="token id"):
        conn.lookup([1, -2, 3, 4])
    sched = KVConnector(store, layout=LAYOUT, model="m")
    assert sched.lookup(tokens(8)) == 0
    with pytest.raises(InvalidParams, match="scheduler side"):
        sched.load(tokens(8), [0, 1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_round_trip_with_streams(store):
    src = PagedKV.empty(LAYOUT, NUM_BLOCKS, device="cuda")
    for t in src.layers:
        t.normal_()
    a, b, toks = random_table(31), random_table(32), tokens(40)
    KVConnector(store, src, model="m").save(toks, a)
    dst = PagedKV.empty(LAYOUT, NUM_BLOCKS, kind=STACKED, device="cuda")
    handle = KVConnector(store, dst, model="m").start_load(toks, b)
    for layer in range(LAYOUT.num_layers):
        handle.wait_for_layer(layer)     # orders the current stream after the copy
        got = dst.layers[layer][:, b[:10]].clone()
        assert torch.equal(got, src.layers[layer][:, a[:10]])
    assert handle.wait() == 40


# ---------------------------------------------------------------- vLLM adapter ---

def _request(rid: str, toks: list[int]) -> types.SimpleNamespace:
    return types.SimpleNamespace(request_id=rid, prompt_token_ids=toks)


def test_vllm_adapter_save_then_load_into_other_blocks(store):
    from mooncake_store.integrations.vllm import (
        KVConnectorRole,
        MooncakeStoreConnector,
        SchedulerOutput,
    )

    names = [f"model.layers.{i}.self_attn.attn" for i in range(LAYOUT.num_layers)]
    src = random_kv(PER_LAYER, 40)
    kw = dict(model="m", layout=LAYOUT)
    sched = MooncakeStoreConnector(store, KVConnectorRole.SCHEDULER, **kw)
    worker = MooncakeStoreConnector(store, KVConnectorRole.WORKER, **kw)
    worker.register_kv_caches(dict(zip(names, src.layers)))

    # Step 1: request A (22 tokens) is new: nothing cached; it computes and saves.
    toks_a = tokens(22)
    req_a = _request("a", toks_a)
    assert sched.get_num_new_matched_tokens(req_a, 0) == (0, False)
    table_a = random_table(41, n=6)
    sched.update_state_after_alloc(req_a, table_a, 0)
    meta = sched.build_connector_meta(SchedulerOutput.for_new([(req_a, table_a, 22)]))
    worker.bind_connector_metadata(meta)
    worker.start_load_kv()
    for name, layer in zip(names, src.layers):
        worker.wait_for_layer_load(name)
        worker.save_kv_layer(name, layer, None)
    worker.wait_for_save()
    worker.clear_connector_metadata()

    # Step 2: request B shares A's first 20 tokens (5 blocks) then diverges.
    toks_b = toks_a[:20] + tokens(9, start=50)
    req_b = _request("b", toks_b)
    assert sched.get_num_new_matched_tokens(req_b, 0) == (20, False)
    assert sched.get_num_new_matched_tokens(req_b, 8) == (12, False)  # 8 already on GPU
    # A fully cached prompt still leaves its last token to compute.
    assert sched.get_num_new_matched_tokens(_request("c", toks_a[:20]), 0) == (16, False)

    dst = PagedKV.empty(LAYOUT, NUM_BLOCKS)
    worker2 = MooncakeStoreConnector(store, KVConnectorRole.WORKER, **kw)
    worker2.register_kv_caches(dict(zip(names, dst.layers)))
    table_b = random_table(42, n=8)
    sched.update_state_after_alloc(req_b, table_b, 20)
    meta = sched.build_connector_meta(SchedulerOutput.for_new([(req_b, table_b, 29)]))
    worker2.bind_connector_metadata(meta)
    worker2.start_load_kv()
    for name, layer in zip(names, dst.layers):
        worker2.wait_for_layer_load(name)
        worker2.save_kv_layer(name, layer, None)   # (the suffix compute would write here)
    assert_blocks_equal(src, table_a, dst, table_b, 5)
    worker2.wait_for_save()
    assert worker2.get_block_ids_with_load_errors() == set()
    assert worker2.conn.stats.blocks_loaded == 5 and worker2.conn.stats.blocks_saved == 2
    assert worker2.get_finished(set()) == (None, None)
    assert sched.request_finished(req_b, table_b) == (False, None)


def test_vllm_adapter_role_checks(store):
    from mooncake_store.integrations.vllm import KVConnectorRole, MooncakeStoreConnector

    sched = MooncakeStoreConnector(store, KVConnectorRole.SCHEDULER, model="m", layout=LAYOUT)
    with pytest.raises(InvalidParams, match="worker"):
        sched.start_load_kv()
    worker = MooncakeStoreConnector(store, KVConnectorRole.WORKER, model="m", layout=LAYOUT)
    with pytest.raises(InvalidParams, match="register_kv_caches"):
        worker.start_load_kv()
    with pytest.raises(InvalidParams, match="geometry"):
        worker.register_kv_caches({"l0": torch.zeros(2, 4, 8, 2, 8)})


@pytest.mark.parametrize("failure", ["evicted", "store_error"])
def test_vllm_adapter_reports_failed_loads_for_recompute(store, failure):
    from mooncake_store.integrations.vllm import (
        KVConnectorRole,
        MooncakeStoreConnector,
        SchedulerOutput,
    )

    names = [f"layer{i}" for i in range(LAYOUT.num_layers)]
    toks = tokens(21)
    KVConnector(store, random_kv(PER_LAYER, 50), model="m").save(toks, random_table(51))
    sched = MooncakeStoreConnector(store, KVConnectorRole.SCHEDULER, model="m", layout=LAYOUT)
    worker = MooncakeStoreConnector(store, KVConnectorRole.WORKER, model="m", layout=LAYOUT)
    worker.register_kv_caches(dict(zip(names, PagedKV.empty(LAYOUT, NUM_BLOCKS).layers)))
    req = _request("r", toks)
    assert sched.get_num_new_matched_tokens(req, 0) == (20, False)
    table = random_table(52, n=6)
    sched.update_state_after_alloc(req, table, 20)
    worker.bind_connector_metadata(
        sched.build_connector_meta(SchedulerOutput.for_new([(req, table, 1)])))
    if failure == "evicted":                      # block 2 goes between lookup and load
        store.remove(worker.conn.keys(toks)[2], force=True)
    else:                                         # the store read itself fails
        def broken(*a, **k):
            raise RuntimeError("transfer failed")
        store.batch_get_into = broken
    worker.start_load_kv()
    for name in names:
        worker.wait_for_layer_load(name)          # never raises into the forward pass
        worker.save_kv_layer(name, None, None)
    worker.wait_for_save()
    first_bad = 2 if failure == "evicted" else 0
    assert worker.get_block_ids_with_load_errors() == set(table[first_bad:5])
    assert worker.get_block_ids_with_load_errors() == set()   # reported once
