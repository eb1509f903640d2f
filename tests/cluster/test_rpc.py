"""The control-plane RPC layer: results, typed errors, timeouts, unreachable peers, auth."""
from __future__ import annotations

import threading
import time

import msgpack
import pytest
import zmq

from mooncake_store.errors import (ErrorCode, InvalidParams, ObjectNotFound, RpcFailed, RpcTimeout,
                                   StoreError)
from mooncake_store.rpc import RpcClient, RpcServer


@pytest.fixture
def server():
    gate = threading.Event()

    def missing(key):
        raise ObjectNotFound(f"no {key}")

    def crash():
        raise RuntimeError("handler bug")

    s = RpcServer({"add": lambda a, b: a + b, "missing": missing, "crash": crash,
                   "block": lambda: gate.wait(5), "echo": lambda x: x}).start()
    yield s
    gate.set()
    s.close()


def test_results_and_typed_errors(server):
    with RpcClient(server.address, timeout_ms=2000) as c:
        assert c.call("add", 2, 3) == 5
        assert c.call("echo", {"k": [1, b"\x00\xff", "é"]}) == {"k": [1, b"\x00\xff", "é"]}
        with pytest.raises(ObjectNotFound) as e:
            c.call("missing", "x")
        assert e.value.code == ErrorCode.OBJECT_NOT_FOUND and "no x" in str(e.value)
        with pytest.raises(InvalidParams):
            c.call("nope")
        with pytest.raises(InvalidParams):
            c.call("add", 1)                  # wrong arity
        with pytest.raises(StoreError) as e:
            c.call("crash")
        assert e.value.code == ErrorCode.INTERNAL_ERROR
        assert c.call("add", 1, 1) == 2       # the server survived all of that


def test_timeout_then_recovers(server):
    with RpcClient(server.address, timeout_ms=300) as c:
        t0 = time.monotonic()
        with pytest.raises(RpcTimeout) as e:
            c.call("block")
        assert e.value.code == -901
        assert time.monotonic() - t0 < 3.0
    with RpcClient(server.address, timeout_ms=10_000) as c2:
        assert c2.call("add", 4, 4) == 8      # late answers never reach the next call


def test_unreachable_is_rpc_failed():
    with RpcClient("127.0.0.1:1", timeout_ms=300) as c:
        t0 = time.monotonic()
        with pytest.raises(RpcFailed) as e:
            c.call("add", 1, 2)
        assert e.value.code == -900
        assert time.monotonic() - t0 < 3.0


def test_auth_token():
    s = RpcServer({"add": lambda a, b: a + b}, token="s3cret").start()
    try:
        with RpcClient(s.address, timeout_ms=2000, token="s3cret") as good:
            assert good.call("add", 1, 2) == 3
        with RpcClient(s.address, timeout_ms=2000, token="wrong") as bad:
            with pytest.raises(RpcFailed, match="authentication"):
                bad.call("add", 1, 2)
    finally:
        s.close()


def test_malformed_frames_and_other_versions_do_not_break_the_server(server):
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(f"tcp://{server.address}")
    try:
        raw.send(b"\xc1garbage")
        raw.send(msgpack.packb([1, 2, 3]))
        raw.send(msgpack.packb([99, 7, "add", [1, 2], ""]))   # a future protocol version
        assert raw.poll(3000)
        version, rid, code, msg = msgpack.unpackb(raw.recv())
        assert rid == 7 and code == ErrorCode.INVALID_PARAMS and "version" in msg
    finally:
        raw.close(0)
    with RpcClient(server.address, timeout_ms=2000) as c:
        assert c.call("add", 20, 22) == 42
    assert server.bad_requests == 2


def test_bad_address_is_invalid_params():
    for bad in ("", "nohost", "h:notaport", "h:0", "h:70000"):
        with pytest.raises(InvalidParams):
            RpcClient(bad)


def test_concurrent_callers_share_one_client(server):
    c = RpcClient(server.address, timeout_ms=5000)
    errors = []

    def worker(base):
        try:
            for i in range(200):
                assert c.call("add", base, i) == base + i
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    c.close()
    assert not errors
