"""RpcClient: a DEALER socket with per-call timeouts and typed errors.

- The peer cannot be reached within connect_timeout_ms -> RpcFailed (-900).
- The request went out but no answer came within timeout_ms -> RpcTimeout (-901).
- The handler raised a StoreError -> the same typed exception here.

ZMQ_IMMEDIATE keeps messages off connections that are not up, so "writable"
means "connected": that is how an unreachable peer is told apart from a slow one.
After a timeout the socket is rebuilt, so nothing queued for a dead peer is sent
later and a late answer cannot be mistaken for the next call's.
"""
from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import zmq

from ..errors import InvalidParams, RpcFailed, RpcTimeout, error_for
from .protocol import VERSION, BadMessage, pack_request, unpack_response


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
            sock = self._socket()
            req_id = next(self._ids)
            frame = pack_request(req_id, method, list(args), self.token)
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
                    version, rid, code, result = unpack_response(sock.recv())
                except BadMessage as e:
                    raise RpcFailed(f"{method}: bad answer from {self.addr}: {e}") from None
                if rid != req_id:
                    continue  # a late answer to a call we gave up on
                if version != VERSION:
                    raise RpcFailed(f"{method}: {self.addr} speaks protocol {version}, not {VERSION}")
                if code == 0:
                    return result
                raise error_for(code, str(result))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._reset()

    def __enter__(self) -> "RpcClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
