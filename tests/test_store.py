"""Embedded Store semantics (the Pythonic face)."""
import threading
import time

import numpy as np
import pytest

from mooncake_store import (
    ChecksumMismatch,
    ErrorCode,
    InvalidParams,
    NoSpace,
    ObjectHasLease,
    ObjectNotFound,
    ReplicaNotReady,
    ReplicateConfig,
    Store,
    StoreClosed,
)

MiB = 1 << 20


@pytest.fixture
def store():
    with Store(capacity="64MB", lease_ttl_ms=200) as s:
        yield s


def test_default_store_just_works():
    with Store() as s:
        assert s.stats()["capacity"] == 1 << 30
        s.put("k", b"v")
        assert s.get("k") == b"v"


def test_put_is_immutable_and_upsert_replaces(store):
    store.put("k", b"first")
    store.put("k", b"second")
    assert store.get("k") == b"first"
    store.upsert("k", b"third value")
    assert store.get("k") == b"third value"
    assert store.size("k") == 11


def test_miss_raises_typed_error_with_code(store):
    with pytest.raises(ObjectNotFound) as e:
        store.get("nope")
    assert e.value.code == ErrorCode.OBJECT_NOT_FOUND
    assert not store.exists("nope")
    with pytest.raises(ObjectNotFound):
        store.size("nope")
    with pytest.raises(ObjectNotFound):
        store.remove("nope")


def test_values_of_many_sizes_round_trip(store):
    rng = np.random.default_rng(1)
    for n in (1, 63, 64, 65, 4096, 65537, 3 * MiB + 5):
        v = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        store.put(f"v{n}", v)
        assert store.get(f"v{n}") == v
        assert bytes(store.get_buffer(f"v{n}")) == v


def test_buffer_handle(store):
    store.put("k", b"abcdef")
    h = store.get_buffer("k")
    assert h.size() == len(h) == 6 and h.ptr() != 0
    assert bytes(memoryview(h)) == b"abcdef"


def test_put_parts(store):
    store.put_parts("k", b"ab", bytearray(b"cd"), memoryview(b"ef"))
    assert store.get("k") == b"abcdef"


def test_zero_copy_numpy_and_raw_pointer(store):
    src = np.arange(MiB, dtype=np.uint8)
    store.put_from("np", src)
    dst = np.zeros_like(src)
    assert store.get_into("np", dst) == MiB
    assert np.array_equal(src, dst)
    raw = np.zeros(MiB, dtype=np.uint8)
    assert store.get_into("np", raw.ctypes.data, raw.nbytes) == MiB
    assert np.array_equal(src, raw)
    store.put_from("raw", src.ctypes.data, 1000)
    assert store.get("raw") == src[:1000].tobytes()


def test_zero_copy_torch_cpu(store):
    torch = pytest.importorskip("torch")
    t = torch.arange(1000, dtype=torch.int32)
    store.put_from("t", t)
    out = torch.zeros(1000, dtype=torch.int32)
    assert store.get_into("t", out) == 4000
    assert torch.equal(out, t)


def test_get_into_too_small_is_invalid_params(store):
    store.put("k", b"x" * 100)
    with pytest.raises(InvalidParams):
        store.get_into("k", bytearray(99))
    with pytest.raises(InvalidParams):
        store.get_into("k", bytearray(200), size=300)  # size larger than the buffer
    buf = np.zeros(100, np.uint8)
    store.register_buffer(buf.ctypes.data, 100)
    with pytest.raises(InvalidParams):
        store.get_into("k", buf.ctypes.data + 10, 100)  # runs past the registered buffer
    store.unregister_buffer(buf.ctypes.data)


def test_batch_calls(store):
    keys = [f"b{i}" for i in range(10)]
    vals = [bytes([i]) * (i + 1) for i in range(10)]
    assert store.batch_put(keys, vals) == [0] * 10
    assert store.batch_get(keys + ["missing"]) == vals + [None]
    assert store.batch_exists(["missing", "b3", "b0"]) == [False, True, True]
    assert store.batch_exists([]) == []
    bufs = [bytearray(16) for _ in keys]
    got = store.batch_get_into(keys + ["missing"], bufs + [bytearray(4)])
    assert got[:10] == [i + 1 for i in range(10)] and got[10] == ErrorCode.OBJECT_NOT_FOUND
    assert [bytes(b[:i + 1]) for i, b in enumerate(bufs)] == vals
    with pytest.raises(InvalidParams):
        store.batch_put(keys, vals[:3])
    assert store.batch_remove(["b1", "missing"], force=True) == [0, ErrorCode.OBJECT_NOT_FOUND]


def test_batch_put_from_and_longest_prefix(store):
    arr = np.arange(8 * 4096, dtype=np.uint8).reshape(8, 4096)
    keys = [f"p{i}" for i in range(8)]
    assert store.batch_put_from(keys[:5], list(arr[:5])) == [0] * 5
    assert store.longest_prefix(keys) == 5
    assert store.longest_prefix(["zz"] + keys) == 0
    assert store.longest_prefix([]) == 0
    store.remove("p2", force=True)
    assert store.longest_prefix(keys) == 2


def test_lease_blocks_remove_until_expiry_or_force(store):
    store.put("k", b"v")
    store.get("k")
    with pytest.raises(ObjectHasLease) as e:
        store.remove("k")
    assert e.value.code == -706
    time.sleep(0.25)
    store.remove("k")
    store.put("k2", b"v")
    assert store.exists("k2")  # exists grants a lease too
    with pytest.raises(ObjectHasLease):
        store.remove("k2")
    store.remove("k2", force=True)
    assert not store.exists("k2")


def test_remove_all_and_regex_respect_leases(store):
    for i in range(6):
        store.put(f"a{i}", b"x")
    store.put("b0", b"x")
    time.sleep(0.25)
    store.get("a0")  # leased
    assert store.remove_by_regex(r"^a") == 5
    assert store.remove_all() == 1   # b0; a0 still leased
    assert store.remove_all(force=True) == 1
    assert store.keys() == []
    with pytest.raises(InvalidParams):
        store.remove_by_regex("(")


def test_eviction_keeps_leased_and_pinned():
    with Store(capacity="8MB", lease_ttl_ms=60_000) as s:
        v = b"p" * (256 << 10)
        s.put("hard", v, ReplicateConfig(with_hard_pin=True))
        s.put("leased", v)
        s.get("leased")
        s.put("soft", v, ReplicateConfig(with_soft_pin=True))
        for i in range(200):  # 50 MB through an 8 MB store
            s.put(f"fill{i}", v)
        for k in ("hard", "leased", "soft"):
            assert s.get(k) == v
        st = s.stats()
        assert st["evictions"] > 100 and st["used"] <= st["capacity"]
        assert s.get("fill199") == v  # the newest survive


def test_no_space_when_everything_is_pinned():
    with Store(capacity="4MB") as s:
        v = b"x" * MiB
        n = 0
        with pytest.raises(NoSpace) as e:
            for i in range(10):
                s.put(f"k{i}", v, ReplicateConfig(with_hard_pin=True))
                n += 1
        assert e.value.code == ErrorCode.NO_AVAILABLE_HANDLE
        assert 1 <= n < 4
        with pytest.raises(NoSpace):
            s.put("huge", b"x" * (5 * MiB))


def test_corruption_is_detected_and_never_returned(store):
    v = bytes(range(256)) * 64
    store.put("k", v)
    look = store._index.get_replicas("k")
    sl = look.replicas[0][0]
    seg = store._segments[sl.segment]
    seg.view(sl.offset + sl.length - 100, 1)[0] ^= 0xFF
    with pytest.raises(ChecksumMismatch) as e:
        store.get("k")
    assert e.value.code == -801
    with pytest.raises(ObjectNotFound):
        store.get("k")  # the bad object was dropped, not served again


def test_corrupted_header_detected(store):
    store.put("k", b"z" * 1000)
    sl = store._index.get_replicas("k").replicas[0][0]
    store._segments[sl.segment].view(sl.offset + 20, 1)[0] ^= 1
    with pytest.raises(ChecksumMismatch):
        store.get_into("k", bytearray(1000))


def test_tensors_round_trip(store):
    torch = pytest.importorskip("torch")
    cases = [torch.randn(4, 5, 6, dtype=torch.float16), torch.randn(7, 3).to(torch.bfloat16),
             torch.randint(-128, 127, (33,), dtype=torch.int8), torch.rand(5, 2) > 0.5,
             torch.tensor(3.5), torch.randn(2, 3, 4)[:, 1]]
    for i, t in enumerate(cases):
        store.put_tensor(f"t{i}", t)
        got = store.get_tensor(f"t{i}")
        assert got.dtype == t.dtype and got.shape == t.shape
        assert torch.equal(got, t)
    assert store.batch_put_tensor(["x", "y"], cases[:2]) == [0, 0]
    out = store.batch_get_tensor(["x", "missing"])
    assert torch.equal(out[0], cases[0]) and out[1] is None
    target = torch.empty(4, 5, 6, dtype=torch.float16)
    store.get_tensor_into("t0", target)
    assert torch.equal(target, cases[0])
    store.put("raw", b"not a tensor")
    with pytest.raises(InvalidParams):
        store.get_tensor("raw")


def test_concurrent_puts_lose_nothing():
    with Store(capacity="1GB") as s:
        errors = []

        def worker(t):
            try:
                for i in range(100):
                    s.put(f"t{t}/{i}", bytes([t, i % 256]) * (MiB // 2))
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=120)
        assert not errors
        assert len(s.keys()) == 800
        for t in range(8):
            for i in range(0, 100, 7):
                assert s.get(f"t{t}/{i}") == bytes([t, i % 256]) * (MiB // 2)


def test_concurrent_readers_and_writers_see_only_whole_values():
    with Store(capacity="16MB", lease_ttl_ms=50) as s:
        stop = time.monotonic() + 2.0
        bad = []

        def writer():
            i = 0
            while time.monotonic() < stop and i < 20000:
                s.upsert(f"k{i % 20}", bytes([i % 251]) * 200_000)
                i += 1

        def reader():
            n = 0
            while time.monotonic() < stop and n < 20000:
                try:
                    v = s.get(f"k{n % 20}")
                    if v != v[:1] * len(v):
                        bad.append(n)
                except (ObjectNotFound, ChecksumMismatch, ReplicaNotReady):
                    pass
                n += 1

        ts = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=30)
        assert bad == []


@pytest.mark.parametrize("key", ["", "x" * 4097, 12, None, b"\xff\xfe"])
def test_bad_keys(store, key):
    with pytest.raises(InvalidParams):
        store.put(key, b"v")


@pytest.mark.parametrize("value", [b"", bytearray(), 5, "text", None, np.zeros(0)])
def test_bad_values(store, value):
    with pytest.raises(InvalidParams):
        store.put("k", value)


def test_bad_sizes_and_pointers(store):
    with pytest.raises(InvalidParams):
        store.put_from("k", 0, 10)
    with pytest.raises(InvalidParams):
        store.put_from("k", 12345, -1)
    with pytest.raises(InvalidParams):
        store.put_from("k", 12345)  # raw pointer without a size
    with pytest.raises(InvalidParams):
        store.get_into("k", b"read-only bytes")


def test_closed_store_raises():
    s = Store(capacity="4MB")
    s.put("k", b"v")
    s.close()
    s.close()  # idempotent
    for call in (lambda: s.get("k"), lambda: s.put("a", b"b"), lambda: s.exists("k"),
                 lambda: s.batch_get(["k"])):
        with pytest.raises(StoreClosed) as e:
            call()
        assert e.value.code == ErrorCode.UNAVAILABLE_IN_CURRENT_STATUS


def test_unknown_config_field_is_named():
    with pytest.raises(InvalidParams, match="bogus"):
        Store(bogus=1)
    with pytest.raises(InvalidParams, match="global_segment_size"):
        Store(capacity="lots")


def test_cluster_address_is_a_clear_error_until_cluster_mode_exists():
    from mooncake_store import StoreError
    try:
        s = Store(master="127.0.0.1:1", capacity="4MB", rpc_timeout_ms=300)  # noqa: F841
    except StoreError as e:
        assert e.code in (ErrorCode.UNAVAILABLE_IN_CURRENT_STATUS, ErrorCode.RPC_FAIL,
                          ErrorCode.RPC_TIMEOUT, ErrorCode.INVALID_PARAMS)
    else:
        s.close()


def test_placement_spreads_writes_by_free_space_and_ramps_up_new_segments():
    from mooncake_store.master.index import ObjectIndex
    from mooncake_store.config import Config
    ix = ObjectIndex(Config(global_segment_size=1 << 30))
    ix.add_segment("old:1", 64 << 20)
    for i in range(300):  # fill the old segment to ~75%
        ix.put_start(f"o{i}", 160 << 10)
        ix.put_end(f"o{i}")
    ix.add_segment("new:2", 64 << 20)
    counts = {"old:1": 0, "new:2": 0}
    for i in range(200):
        reps = ix.put_start(f"n{i}", 4096)
        counts[reps[0][0].segment] += 1
        ix.put_end(f"n{i}")
    # The empty node gets more (it has ~4x the free space) but not everything.
    assert counts["new:2"] > counts["old:1"] > 10


def test_force_removed_leased_space_is_reused_before_live_objects_are_evicted():
    with Store(capacity="8MB", lease_ttl_ms=60_000) as s:
        v = b"g" * (512 << 10)
        for i in range(12):
            s.put(f"old{i}", v)
            s.get(f"old{i}")              # leased for a minute
        assert s.remove_all(force=True) == 12
        for i in range(12):               # needs the space the leases still cover
            s.put(f"new{i}", v)
        assert all(s.get(f"new{i}") == v for i in range(12))
        assert s.stats()["evictions"] == 0


def test_failed_read_of_an_old_version_does_not_drop_the_new_one():
    with Store(capacity="8MB") as s:
        s.put("k", b"a" * 1000)
        old = s._index.get_replicas("k")
        s.upsert("k", b"b" * 1000)
        assert not s._index.drop_if_current("k", old.replicas)
        assert s.get("k") == b"b" * 1000
