"""DRAM -> SSD demotion, promotion on hit, warm restart, and corruption in the cold tier."""
import os

import numpy as np
import pytest

from mooncake_store import ChecksumMismatch, ObjectNotFound, Store
from mooncake_store.node.ssd import DATA_NAME

KiB = 1 << 10


def _values(n, size=256 * KiB, seed=0):
    return {f"k{i}": np.random.default_rng(seed + i).integers(0, 256, size, dtype=np.uint8)
            .tobytes() for i in range(n)}


def _tiered(path, **kw):
    opts = dict(capacity="8MB", enable_ssd_offload=True, ssd_offload_path=str(path),
                ssd_capacity="64MB", lease_ttl_ms=10, cold_codec="none")
    opts.update(kw)
    return Store(**opts)


def test_pressure_demotes_instead_of_dropping(tmp_path):
    vals = _values(80)  # 20 MB through 8 MB of DRAM
    with _tiered(tmp_path) as s:
        for k, v in vals.items():
            s.put(k, v)
        s._tiers.flush()
        st = s.stats()
        assert st["objects"] == 80 and st["demoted"] > 0
        assert st["tiers"]["ssd"]["objects"] > 0
        for k, v in vals.items():
            assert s.get(k) == v
        out = bytearray(256 * KiB)
        assert s.get_into("k0", out) == 256 * KiB and bytes(out) == vals["k0"]


def test_hit_on_cold_tier_promotes(tmp_path):
    vals = _values(60)
    with _tiered(tmp_path) as s:
        for k, v in vals.items():
            s.put(k, v)
        s._tiers.flush()
        cold = [k for k in vals if s._index._objects[k].tier == "ssd"]
        assert cold
        assert s.get(cold[0]) == vals[cold[0]]
        s._tiers.flush()
        assert s._index._objects[cold[0]].tier == "dram"
        assert s.stats()["promoted"] >= 1
        assert s.get(cold[0]) == vals[cold[0]]


def test_second_hit_promotion_policy(tmp_path):
    vals = _values(60)
    with _tiered(tmp_path, promotion="on-second-hit") as s:
        for k, v in vals.items():
            s.put(k, v)
        s._tiers.flush()
        key = next(k for k in vals if s._index._objects[k].tier == "ssd")
        s.get(key)
        s._tiers.flush()
        assert s._index._objects[key].tier == "ssd"
        s.get(key)
        s._tiers.flush()
        assert s._index._objects[key].tier == "dram"


def test_warm_restart_recovers_cold_objects(tmp_path):
    vals = _values(60, seed=7)
    with _tiered(tmp_path) as s:
        for k, v in vals.items():
            s.put(k, v)
        s._tiers.flush()
        s.remove("k59", force=True)  # a removed object must stay removed
        s._tiers.flush()
        cold = {k for k in vals if k in s._index._objects and s._index._objects[k].cold}
    with _tiered(tmp_path) as s:
        assert cold and cold <= set(s.keys())
        assert "k59" not in s.keys()
        for k in cold:
            assert s.get(k) == vals[k]


def test_corrupt_cold_record_is_never_served(tmp_path):
    vals = _values(60, seed=3)
    with _tiered(tmp_path, promotion="off") as s:
        for k, v in vals.items():
            s.put(k, v)
        s._tiers.flush()
        key = next(k for k in vals if s._index._objects[k].tier == "ssd")
        ssd = s._tiers.backends["ssd"]
        loc = ssd.location(key)
        with open(os.path.join(ssd.path, DATA_NAME), "r+b") as f:
            f.seek(loc.offset + loc.length - 10)
            b = f.read(1)
            f.seek(loc.offset + loc.length - 10)
            f.write(bytes([b[0] ^ 0xFF]))
        with pytest.raises(ChecksumMismatch):
            s.get(key)
        with pytest.raises(ObjectNotFound):
            s.get(key)  # the only copy was bad: dropped, not served


def test_upsert_replaces_cold_copy(tmp_path):
    vals = _values(60, seed=11)
    with _tiered(tmp_path, promotion="off") as s:
        for k, v in vals.items():
            s.put(k, v)
        s._tiers.flush()
        key = next(k for k in vals if s._index._objects[k].tier == "ssd")
        s.upsert(key, b"new value")
        s._tiers.flush()
        assert s.get(key) == b"new value"
    with _tiered(tmp_path) as s:
        assert s.get(key) != vals[key] if s.exists(key) else True


def test_compressed_cold_tier_round_trips(tmp_path):
    pytest.importorskip("mooncake_store.compress")
    torch = pytest.importorskip("torch")
    vals = {f"t{i}": torch.randn(128 * KiB, generator=torch.Generator().manual_seed(i))
            .to(torch.bfloat16).view(torch.uint8).numpy().tobytes() for i in range(40)}
    with _tiered(tmp_path, cold_codec="auto") as s:
        for k, v in vals.items():
            s.put(k, v)
        s._tiers.flush()
        assert s.stats()["demoted"] > 0
        for k, v in vals.items():
            assert s.get(k) == v


@pytest.fixture
def s3_env(seaweedfs, s3_bucket, monkeypatch):
    monkeypatch.setenv("MOONCAKE_S3_ACCESS_KEY_ID", seaweedfs.access_key)
    monkeypatch.setenv("MOONCAKE_S3_SECRET_ACCESS_KEY", seaweedfs.secret_key)
    return dict(s3_bucket=s3_bucket, s3_endpoint_url=seaweedfs.endpoint,
                s3_region=seaweedfs.region)


def test_dram_ssd_s3_chain_keeps_everything(tmp_path, s3_env):
    vals = _values(48, size=128 * KiB, seed=21)  # 6 MB: DRAM 2 MB, SSD 2 MB, rest in S3
    with _tiered(tmp_path, capacity="2MB", ssd_capacity="2MB", **s3_env) as s:
        for k, v in vals.items():
            s.put(k, v)
        assert s._tiers.flush(60)
        st = s.stats()
        assert st["objects"] == 48
        assert st["pushed_down"] > 0 and st["tiers"]["s3"]["objects"] > 0
        for k, v in vals.items():
            assert s.get(k) == v
        assert s._tiers.flush(60)
        cold = {k for k, o in s._index._objects.items() if o.cold}
    # A fresh store over the same SSD directory and bucket finds every cold object again
    # (DRAM is volatile: what lived only there went with the process).
    with _tiered(tmp_path, capacity="2MB", ssd_capacity="2MB", promotion="off", **s3_env) as s:
        assert len(cold) >= 30 and cold <= set(s.keys())
        for k in sorted(cold):
            assert s.get(k) == vals[k]


def test_s3_only_cold_tier(s3_env):
    vals = _values(24, size=128 * KiB, seed=5)
    with Store(capacity="1MB", lease_ttl_ms=10, cold_codec="none", **s3_env) as s:
        for k, v in vals.items():
            s.put(k, v)
        assert s._tiers.flush(60)
        assert s.stats()["tiers"]["s3"]["objects"] > 0
        for k, v in vals.items():
            assert s.get(k) == v


def test_tensor_values_demote_with_their_element_width(tmp_path):
    torch = pytest.importorskip("torch")
    from mooncake_store.client.tensors import element_size_of, encode_meta
    from mooncake_store.node.tiering import _elem_size
    assert element_size_of(encode_meta(torch.zeros(3, dtype=torch.float32))) == 4
    assert element_size_of(encode_meta(torch.zeros(3, dtype=torch.bfloat16))) == 2
    assert element_size_of(b"not a tensor value at all, but long enough") is None
    assert _elem_size(1, encode_meta(torch.zeros(2, dtype=torch.float64))) == 8
    assert _elem_size(0, b"raw bytes") == 2
    ts = {f"f{i}": torch.randn(64 * KiB, generator=torch.Generator().manual_seed(i))
          for i in range(30)}   # 256 KiB fp32 each, 7.5 MB through 4 MB of DRAM
    with _tiered(tmp_path, capacity="4MB", cold_codec="auto") as s:
        for k, t in ts.items():
            s.put_tensor(k, t)
        s._tiers.flush()
        assert s.stats()["demoted"] > 0
        for k, t in ts.items():
            assert torch.equal(s.get_tensor(k), t)


def test_persist_writes_through_to_the_durable_tier(tmp_path, s3_env):
    from mooncake_store import ReplicateConfig
    rc = ReplicateConfig(persist=True)
    vals = _values(6, size=64 * KiB, seed=31)
    keys = list(vals)
    with _tiered(tmp_path, capacity="64MB", **s3_env) as s:
        s.put(keys[0], vals[keys[0]], rc)
        assert s.batch_put(keys[1:4], [vals[k] for k in keys[1:4]], rc) == [0, 0, 0]
        s.put(keys[4], vals[keys[4]])           # not persisted: DRAM only
        s3 = s._tiers.backends["s3"]
        assert all(s3.contains(k) for k in keys[:4]) and not s3.contains(keys[4])
        assert s.get(keys[0]) == vals[keys[0]]  # still served from DRAM
    with _tiered(tmp_path, capacity="64MB", **s3_env) as s:   # a restart finds them
        for k in keys[:4]:
            assert s.get(k) == vals[k]
        assert not s.exists(keys[4])


def test_persist_without_a_reachable_tier_fails_the_put(tmp_path, seaweedfs, s3_env):
    from mooncake_store import ReplicateConfig, TransferFailed
    with Store(capacity="16MB", cold_codec="none", **s3_env) as s:
        s._tiers.backends["s3"].cfg.retry_deadline_s = 1.0   # keep the test short
        seaweedfs.stop()
        try:
            with pytest.raises(TransferFailed):
                s.put("p", b"x" * 1000, ReplicateConfig(persist=True))
        finally:
            seaweedfs.start()
        assert not s.exists("p")
