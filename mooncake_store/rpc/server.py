"""RpcServer: a ROUTER socket served by one thread that dispatches to named handlers.

One dispatch thread keeps the master's state changes ordered without extra locks
around every call; handlers are short (index operations), never block on I/O.
"""
from __future__ import annotations

import hmac
import logging
import threading
from typing import Any, Callable

import zmq

from ..errors import ErrorCode, StoreError
from .protocol import VERSION, BadMessage, pack_response, unpack_request

log = logging.getLogger("mooncake_store.rpc")


class RpcServer:
    """Serve `handlers` (name -> callable(*args)) on tcp://host:port (port 0: any free port)."""

    def __init__(self, handlers: dict[str, Callable[..., Any]], host: str = "127.0.0.1",
                 port: int = 0, token: str = "") -> None:
        self.handlers = dict(handlers)
        self.token = token
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        try:
            if port:
                self._sock.bind(f"tcp://{host}:{port}")
                self.port = port
            else:
                self.port = self._sock.bind_to_random_port(f"tcp://{host}")
        except zmq.ZMQError as e:
            self._sock.close(0)
            raise StoreError(f"cannot listen on {host}:{port}: {e}",
                             ErrorCode.INVALID_PARAMS) from None
        self.host = host
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.calls = 0
        self.bad_requests = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "RpcServer":
        self._thread = threading.Thread(target=self._loop, name="mcs-rpc-server", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._sock.close(0)

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):  # wake up to notice close()
                continue
            while True:
                try:
                    frames = self._sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                except zmq.ZMQError:
                    return
                if len(frames) != 2:
                    self.bad_requests += 1
                    continue
                reply = self._handle(frames[1])
                if reply is not None:
                    try:
                        self._sock.send_multipart([frames[0], reply], zmq.NOBLOCK)
                    except zmq.ZMQError:
                        pass  # the caller went away; nothing to answer

    def _handle(self, frame: bytes) -> bytes | None:
        try:
            version, req_id, method, args, token = unpack_request(frame)
        except BadMessage as e:
            self.bad_requests += 1
            log.debug("bad request: %s", e)
            return None
        if version != VERSION:
            return pack_response(req_id, ErrorCode.INVALID_PARAMS,
                                 f"protocol version {version} not supported (server speaks {VERSION})")
        if self.token and not hmac.compare_digest(token.encode(), self.token.encode()):
            return pack_response(req_id, ErrorCode.RPC_FAIL, "authentication failed: bad token")
        fn = self.handlers.get(method)
        if fn is None:
            return pack_response(req_id, ErrorCode.INVALID_PARAMS, f"unknown method {method!r}")
        self.calls += 1
        try:
            return pack_response(req_id, 0, fn(*args))
        except StoreError as e:
            return pack_response(req_id, e.code, str(e))
        except (TypeError, ValueError) as e:
            return pack_response(req_id, ErrorCode.INVALID_PARAMS, f"{method}: {e}")
        except Exception as e:  # noqa: BLE001 - a handler bug must not kill the server
            log.exception("handler %s failed", method)
            return pack_response(req_id, ErrorCode.INTERNAL_ERROR, f"{method}: {type(e).__name__}: {e}")
