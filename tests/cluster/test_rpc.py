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


def test_server_port_out_of_range_is_invalid_params():
    # zmq takes a port modulo 65536: 99999 would listen on 34463 and say nothing.
    for bad in (-1, 65536, 99999):
        with pytest.raises(InvalidParams, match="out of range"):
            RpcServer({}, "127.0.0.1", bad)


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


# ---- the stream lane (rpc/stream.py) -------------------------------------------------------

def test_calls_move_to_the_stream_lane_with_the_same_results(server):
    with RpcClient(server.address, timeout_ms=2000) as c:
        assert c.lane == "zmq"                 # nothing answered yet
        assert c.call("add", 1, 2) == 3
        assert c.lane == "unix"                # same host: the Unix socket
        assert c.call("echo", {"k": [1, b"\x00\xff", "é"]}) == {"k": [1, b"\x00\xff", "é"]}
        with pytest.raises(ObjectNotFound, match="no y"):
            c.call("missing", "y")
        with pytest.raises(StoreError) as e:
            c.call("crash")
        assert e.value.code == ErrorCode.INTERNAL_ERROR
        big = bytes(range(256)) * 8192         # 2 MiB: above the lane's request cap, goes by zmq
        assert c.call("echo", big) == big
        assert c.call("echo", [big[:70_000]] * 3) == [big[:70_000]] * 3   # large answer on the lane
        assert c.lane == "unix"


def test_tcp_lane_when_there_is_no_unix_socket():
    s = RpcServer({"add": lambda a, b: a + b}, lanes=("tcp",)).start()
    try:
        with RpcClient(s.address, timeout_ms=2000) as c:
            assert c.call("add", 1, 2) == 3 and c.lane == "tcp"
            assert c.call("add", 2, 2) == 4
    finally:
        s.close()


def test_lane_off_by_environment(server, monkeypatch):
    monkeypatch.setenv("MOONCAKE_RPC_STREAM", "0")
    with RpcClient(server.address, timeout_ms=2000) as c:
        assert c.call("add", 1, 2) == 3 and c.call("add", 1, 3) == 4
        assert c.lane == "zmq"


def test_lane_timeout_then_recovers(server):
    with RpcClient(server.address, timeout_ms=300) as c:
        assert c.call("add", 0, 0) == 0 and c.lane == "unix"
        t0 = time.monotonic()
        with pytest.raises(RpcTimeout) as e:
            c.call("block")
        assert e.value.code == -901 and time.monotonic() - t0 < 3.0
        assert c.lane == "zmq"                 # the lane that timed out is closed
        for i in range(3):
            assert c.call("add", i, 10, timeout_ms=10_000) == i + 10   # never the late answer


def test_server_restart_behind_the_same_port_is_followed():
    first = RpcServer({"who": lambda: "first"}).start()
    port = first.port
    c = RpcClient(first.address, timeout_ms=3000)
    try:
        assert c.call("who") == "first" and c.lane == "unix"
        first.close()
        for _ in range(100):   # zmq releases the port in its own thread, soon after close
            try:
                second = RpcServer({"who": lambda: "second"}, port=port).start()
                break
            except StoreError:
                time.sleep(0.05)
        try:
            assert c.call("who") == "second"   # dead lane noticed, zmq reconnects
            assert c.call("who") == "second" and c.lane == "unix"
        finally:
            second.close()
    finally:
        c.close()


def test_lane_checks_the_token():
    s = RpcServer({"add": lambda a, b: a + b}, token="s3cret").start()
    try:
        with RpcClient(s.address, timeout_ms=2000, token="wrong") as bad:
            with pytest.raises(RpcFailed, match="authentication"):
                bad.call("add", 1, 2)
            assert bad.lane == "zmq"
        with RpcClient(s.address, timeout_ms=2000, token="s3cret") as good:
            assert good.call("add", 1, 2) == 3 and good.lane == "unix"
        # A lane reached directly still checks every request's token.
        import socket
        from mooncake_store.rpc import stream
        from mooncake_store.rpc.protocol import pack_request, unpack_response
        lane = stream.Lane.connect("unix", "\0" + s.lanes()["unix"], 2)
        try:
            _, rid, code, msg = lane.call(pack_request(5, "add", [1, 2], "wrong"),
                                          time.monotonic() + 2, "add")
            assert rid == 5 and code == ErrorCode.RPC_FAIL and "authentication" in msg
        finally:
            lane.close()
        assert socket and unpack_response
    finally:
        s.close()


def test_stream_lane_survives_hostile_frames(server):
    import socket
    import struct
    from mooncake_store.rpc.protocol import pack_request
    name = "\0" + server.lanes()["unix"]
    # A length claim far past the cap: the connection is dropped before any allocation.
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(3)
    s.connect(name)
    s.sendall(struct.pack("<I", 0xFFFFFFFF) + b"\x00" * 16)
    assert s.recv(16) == b""
    s.close()
    # Garbage bodies are counted and dropped; the next good frame on the same stream answers.
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(3)
    s.connect(name)
    before = server.bad_requests
    good = pack_request(9, "add", [40, 2], "")
    s.sendall(b"".join(struct.pack("<I", len(b)) + b for b in
                       (b"\xc1garbage", msgpack.packb([1, 2]), good)))
    n = struct.unpack("<I", s.recv(4))[0]
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    assert msgpack.unpackb(body)[1:3] == [9, 0] and msgpack.unpackb(body)[3] == 42
    assert server.bad_requests == before + 2
    s.close()
    with RpcClient(server.address, timeout_ms=2000) as c:
        assert c.call("add", 20, 22) == 42 and c.lane == "unix"
