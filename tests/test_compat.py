"""The Mooncake-compatible face: same calls, int codes, never raises."""
import numpy as np
import pytest

from mooncake_store import ReplicateConfig
from mooncake_store.store import MooncakeDistributedStore


@pytest.fixture
def mds():
    s = MooncakeDistributedStore()
    assert s.setup("localhost", "P2PHANDSHAKE", 64 << 20, 16 << 20, "tcp", "", "") == 0
    yield s
    s.close()


def test_not_set_up_returns_codes():
    s = MooncakeDistributedStore()
    assert s.health_check() == 1
    assert s.put("k", b"v") == -1010
    assert s.get("k") == b""
    assert s.batch_is_exist(["a", "b"]) == [-1010, -1010]


def test_setup_variants():
    s = MooncakeDistributedStore()
    assert s.setup({"local_hostname": "localhost", "metadata_server": "P2PHANDSHAKE",
                    "global_segment_size": "16MB", "local_buffer_size": "4 MB",
                    "protocol": "tcp", "rdma_devices": "", "master_server_addr": "embedded"}) == 0
    assert s.health_check() == 0
    assert s.setup("x", "y", 1, 1, "tcp", "", "") == -1010  # already set up
    s.close()
    assert s.health_check() == 1
    bad = MooncakeDistributedStore()
    assert bad.setup("localhost", "P2PHANDSHAKE", "lots", 0, "tcp", "", "") == -600
    assert bad.setup("localhost") == -600  # required arguments missing
    assert bad.setup({"local_hostname": "h", "nonsense": 1}) == -600


def test_copy_api(mds):
    assert mds.put("k", b"hello") == 0
    assert mds.put("k", b"other") == 0
    assert mds.get("k") == b"hello"
    assert mds.upsert("k", b"new") == 0 and mds.get("k") == b"new"
    assert mds.get("missing") == b""
    assert mds.put("e", b"") == -600
    assert mds.put("", b"x") == -600
    assert mds.put("x" * 4097, b"x") == -600
    assert mds.put(123, b"x") == -600
    assert mds.put_parts("p", b"a", b"b", b"c") == 0 and mds.get("p") == b"abc"
    assert mds.upsert_parts("p", b"x", b"y") == 0 and mds.get("p") == b"xy"
    assert mds.put_batch(["b1", "b2"], [b"1", b"2"]) == 0
    assert mds.get_batch(["b1", "nope", "b2"]) == [b"1", b"", b"2"]
    assert mds.upsert_batch(["b1"], [b"one"]) == 0 and mds.get("b1") == b"one"
    assert mds.put_batch(["a"], [b"1", b"2"]) == -600
    h = mds.get_buffer("b2")
    assert bytes(h) == b"2" and h.size() == 1 and len(h) == 1 and h.ptr()
    assert mds.get_buffer("nope") is None
    bufs = mds.batch_get_buffer(["b1", "nope"])
    assert bytes(bufs[0]) == b"one" and bufs[1] is None


def test_query_and_removal(mds):
    mds.put("a1", b"x")
    mds.put("a2", b"yy")
    assert mds.is_exist("a1") == 1 and mds.is_exist("zz") == 0
    assert mds.batch_is_exist(["a2", "zz", "a1"]) == [1, 0, 1]
    assert mds.batch_is_exist([]) == []
    assert mds.get_size("a2") == 2 and mds.get_size("zz") == -704
    assert mds.remove("zz") == -704
    assert mds.remove("a1") == -706          # leased by is_exist
    assert mds.remove("a1", True) == 0
    assert mds.batch_remove(["a2", "zz"], True) == [0, -704]
    mds.put("r1", b"x"), mds.put("r2", b"x"), mds.put("s", b"x")
    assert mds.remove_by_regex("^r", True) == 2
    assert mds.remove_all(True) == 1


def test_zero_copy(mds):
    src = np.arange(1 << 16, dtype=np.uint8)
    dst = np.zeros_like(src)
    assert mds.register_buffer(src.ctypes.data, src.nbytes) == 0
    assert mds.register_buffer(dst.ctypes.data, dst.nbytes) == 0
    assert mds.put_from("z", src.ctypes.data, src.nbytes) == 0
    assert mds.get_into("z", dst.ctypes.data, dst.nbytes) == src.nbytes
    assert np.array_equal(src, dst)
    assert mds.get_into("z", dst.ctypes.data, 10) == -600
    assert mds.get_into("missing", dst.ctypes.data, 10) == -704
    keys = ["z0", "z1", "z2"]
    ptrs = [src.ctypes.data + i * 1000 for i in range(3)]
    assert mds.batch_put_from(keys, ptrs, [1000] * 3) == [0, 0, 0]
    outs = [dst.ctypes.data + i * 2000 for i in range(3)]
    assert mds.batch_get_into(keys, outs, [2000] * 3) == [1000] * 3
    assert mds.batch_get_into(keys, outs[:2], [2000] * 3) == [-600] * 3
    assert mds.batch_put_from(keys, ptrs, [1]) == [-600] * 3
    assert mds.upsert_from("z", src.ctypes.data, 5) == 0 and mds.get_size("z") == 5
    assert mds.batch_upsert_from(["z"], [src.ctypes.data], [7]) == [0]
    assert mds.get_size("z") == 7
    assert mds.unregister_buffer(src.ctypes.data) == 0
    assert mds.unregister_buffer(src.ctypes.data) == -600


def test_tensor_api(mds):
    torch = pytest.importorskip("torch")
    t = torch.randn(8, 6, dtype=torch.bfloat16)
    assert mds.put_tensor("t", t) == 0
    assert torch.equal(mds.get_tensor("t"), t)
    assert mds.get_tensor("missing") is None
    assert mds.batch_put_tensor(["a", "b"], [t, t[:2]]) == [0, 0]
    got = mds.batch_get_tensor(["a", "b", "c"])
    assert torch.equal(got[1], t[:2]) and got[2] is None
    assert mds.put_tensor_with_tp("w", t, tp_rank=0, tp_size=2, split_dim=1) == 0
    assert torch.equal(mds.get_tensor_with_tp("w", 1, 2), t[:, 3:])
    assert mds.put_tensor_with_tp("w", t, tp_rank=3, tp_size=2) == -600
    out = torch.empty(8, 6, dtype=torch.bfloat16)
    assert mds.get_tensor_into_cuda("t", out) == 0 and torch.equal(out, t)


def test_replicate_config_fields():
    rc = ReplicateConfig(replica_num=1, with_soft_pin=True, preferred_segment="")
    assert rc.replica_num == 1 and rc.with_soft_pin
    with pytest.raises(ValueError):
        ReplicateConfig(replica_num=0)


def test_setup_takes_engine_positionally_and_hostname_is_a_segment():
    s = MooncakeDistributedStore()
    assert s.setup("localhost", "P2PHANDSHAKE", 16 << 20, 1 << 20, "tcp", "", "", None) == 0
    host = s.get_hostname()
    assert host.startswith("localhost:")
    rc = ReplicateConfig(preferred_segment=host)
    assert s.put("k", b"v", rc) == 0
    assert s.put("k2", b"v", ReplicateConfig(preferred_segment="elsewhere:1")) == -101
    s.close()


def test_batch_put_from_multi_buffers(mds):
    a = np.arange(100, dtype=np.uint8)
    b = np.arange(50, dtype=np.uint8)[::-1].copy()
    codes = mds.batch_put_from_multi_buffers(
        ["m1", "m2"], [[a.ctypes.data, b.ctypes.data], [b.ctypes.data]], [[100, 50], [50]])
    assert codes == [0, 0]
    assert mds.get("m1") == a.tobytes() + b.tobytes()
    assert mds.get("m2") == b.tobytes()
    assert mds.batch_put_from_multi_buffers(["m3"], [[a.ctypes.data]], [[1, 2]]) == [-600]
