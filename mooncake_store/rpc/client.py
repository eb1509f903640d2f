"""RpcClient: a DEALER socket with per-call timeouts and typed errors.

- The peer cannot be reached within connect_timeout_ms -> RpcFailed (-900).
- The request went out but no answer came within timeout_ms -> RpcTimeout (-901).
- The handler raised a StoreError -> the same typed exception here.

ZMQ_IMMEDIATE keeps messages off connections that are not up, so "writable"
means "connected": that is how an unreachable peer is told apart from a slow one.
After a timeout the socket is rebuilt, so nothing queued for a dead peer is sent
later and a late answer cannot be mistaken for the next call's.

Once a zmq call has answered, the client looks for the server's stream lane
(stream.py; same host: Unix socket, else TCP) and sends later calls there, with the
same timeouts and errors. A lane that breaks or times out is closed; the next call
goes over zmq again (which re-establishes a lane once it answers), so connection
handling and the unreachable/slow distinction stay zmq's. MOONCAKE_RPC_STREAM=0
keeps every call on zmq.
"""
from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any

import zmq

from ..errors import InvalidParams, RpcFailed, RpcTimeout, StoreError, error_for
from . import stream
from .protocol import VERSION, BadMessage, pack_request, unpack_response

LANE_PROBE_MS = 1000     # the most a lane search may take (after a call that succeeded)
LANE_RETRY_S = 30.0      # after a failed search, zmq only for this long


def parse_addr(addr: str) -> str:
    """'host:port' or 'tcp://host:port' -> 'tcp://host:port'."""
    if not isinstance(addr, str) or not addr:
        raise InvalidParams(f"master address must be 'host:port', got {addr!r}")
    a = addr[len("tcp://"):] if addr.startswith("tcp://") else addr
    host, sep, port = a.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidParams(f"address must be 'host:port', got {addr!r}")
    return f"tcp://{host}:{port}"


class RpcClient:
    def __init__(self, addr: str, timeout_ms: int = 5000, connect_timeout_ms: int | None = None,
                 token: str = "") -> None:
        self.endpoint = parse_addr(addr)
        self.addr = self.endpoint[len("tcp://"):]
        self.timeout_ms = timeout_ms
        self.connect_timeout_ms = timeout_ms if connect_timeout_ms is None else connect_timeout_ms
        self.token = token
        self._ctx = zmq.Context.instance()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._sock: zmq.Socket | None = None
        self._closed = False
        self._lane: stream.Lane | None = None
        self._lane_at = 0.0 if os.environ.get("MOONCAKE_RPC_STREAM", "1") != "0" else float("inf")

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.IMMEDIATE, 1)
            s.setsockopt(zmq.RECONNECT_IVL, 50)
            s.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
            s.connect(self.endpoint)
            self._sock = s
        return self._sock

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def call(self, method: str, *args: Any, timeout_ms: int | None = None) -> Any:
        timeout = self.timeout_ms if timeout_ms is None else timeout_ms
        with self._lock:
            if self._closed:
                raise RpcFailed(f"rpc client for {self.addr} is closed")
            req_id = next(self._ids)
            frame = pack_request(req_id, method, list(args), self.token)
            lane = self._lane
            if lane is not None and len(frame) <= stream.MAX_REQUEST:
                if lane.usable():
                    try:
                        answer = lane.call(frame, time.monotonic() + timeout / 1000.0, method)
                    except RpcTimeout:
                        self._drop_lane()
                        raise RpcTimeout(f"{method}: no answer from {self.addr} "
                                         f"within {timeout} ms") from None
                    except RpcFailed as e:
                        self._drop_lane()
                        self._reset()   # the server went away: zmq must connect afresh too
                        if getattr(e, "sent", True):
                            raise   # it may have run: the caller decides about a retry
                        answer = None   # it never left: zmq takes it
                    if answer is not None:
                        return self._result(method, req_id, answer)
                else:   # closed by the server (it restarted or stopped)
                    self._drop_lane()
                    self._reset()
            answer = self._zmq_call(method, frame, req_id, timeout)
            if self._lane is None and time.monotonic() >= self._lane_at:
                self._find_lane(timeout)
            return self._result(method, req_id, answer)

    def _zmq_call(self, method: str, frame: bytes, req_id: int, timeout: int) -> tuple:
        sock = self._socket()
        start = time.monotonic()
        try:
            sock.send(frame, zmq.NOBLOCK)   # connected already: the common, cheap case
        except zmq.Again:
            wait = min(timeout, self.connect_timeout_ms)
            if not sock.poll(wait, zmq.POLLOUT):
                self._reset()
                raise RpcFailed(f"{method}: cannot reach {self.addr} "
                                f"(no connection within {wait} ms)") from None
            try:
                sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                self._reset()
                raise RpcFailed(f"{method}: connection to {self.addr} went away") from None
        deadline = start + timeout / 1000.0
        while True:
            left = int((deadline - time.monotonic()) * 1000)
            if left <= 0 or not sock.poll(left, zmq.POLLIN):
                self._reset()
                raise RpcTimeout(f"{method}: no answer from {self.addr} within {timeout} ms")
            try:
                answer = unpack_response(sock.recv())
            except BadMessage as e:
                raise RpcFailed(f"{method}: bad answer from {self.addr}: {e}") from None
            if answer[1] == req_id:
                return answer
            # else: a late answer to a call we gave up on

    def _result(self, method: str, req_id: int, answer: tuple) -> Any:
        version, rid, code, result = answer
        if rid != req_id:
            self._drop_lane()
            raise RpcFailed(f"{method}: {self.addr} answered another call")
        if version != VERSION:
            raise RpcFailed(f"{method}: {self.addr} speaks protocol {version}, not {VERSION}")
        if code == 0:
            return result
        raise error_for(code, str(result))

    def _find_lane(self, timeout: int) -> None:
        """Ask the server (over zmq) for its stream lanes and keep the first one that
        answers "_hello" with the server's id. Any failure: zmq only, for a while."""
        self._lane_at = time.monotonic() + LANE_RETRY_S
        deadline = time.monotonic() + min(timeout, LANE_PROBE_MS) / 1000.0
        try:
            rid = next(self._ids)
            version, _, code, lanes = self._zmq_call(
                "_lanes", pack_request(rid, "_lanes", [], self.token), rid,
                max(1, int((deadline - time.monotonic()) * 1000)))
        except StoreError:
            return
        if code != 0 or version != VERSION or not isinstance(lanes, dict):
            self._lane_at = float("inf")   # a server without lanes
            return
        host = self.addr.rpartition(":")[0].strip("[]")
        ways = []
        if isinstance(lanes.get("unix"), str):
            ways.append(("unix", "\0" + lanes["unix"]))
        if isinstance(lanes.get("tcp"), int):
            ways.append(("tcp", (host, lanes["tcp"])))
        for kind, where in ways:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                lane = stream.Lane.connect(kind, where, left)
            except OSError:
                continue
            try:
                rid = next(self._ids)
                answer = lane.call(pack_request(rid, "_hello", [], self.token), deadline, "_hello")
            except StoreError:
                lane.close()
                continue
            if answer[1] == rid and answer[2] == 0 and answer[3] == lanes.get("id"):
                self._lane = lane
                self._lane_at = 0.0   # if it breaks, look again after the next zmq answer
                return
            lane.close()

    def _drop_lane(self) -> None:
        if self._lane is not None:
            self._lane.close()
            self._lane = None

    @property
    def lane(self) -> str:
        """Which way calls go now: "unix", "tcp" or "zmq"."""
        lane = self._lane
        return lane.kind if lane is not None else "zmq"

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._reset()
            self._drop_lane()

    def __enter__(self) -> "RpcClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RpcClients:
    """One RpcClient per server address, made on first use and closed together."""

    def __init__(self, timeout_ms: int, token: str = "") -> None:
        self.timeout_ms = timeout_ms
        self.token = token
        self._clients: dict[str, RpcClient] = {}
        self._lock = threading.Lock()

    def get(self, addr: str) -> RpcClient:
        with self._lock:
            c = self._clients.get(addr)
            if c is None:
                c = self._clients[addr] = RpcClient(addr, self.timeout_ms, token=self.token)
            return c

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            c.close()
