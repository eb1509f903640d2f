"""RpcServer: a ROUTER socket served by one thread that dispatches to named handlers.

One dispatch thread keeps the master's state changes ordered without extra locks
around every call; handlers are short (index operations), never block on I/O.
The same thread also serves the stream lanes (stream.py: a Unix socket for clients
on this host, a TCP port for the others), which carry the same messages with less
latency than zmq; clients find them with the built-in "_lanes" call.
"""
from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from typing import Any, Callable

import zmq

from ..errors import ErrorCode, InvalidParams, StoreError
from . import stream
from .protocol import VERSION, BadMessage, pack_response, unpack_request

POLLIN, POLLOUT, POLLERR = int(zmq.POLLIN), int(zmq.POLLOUT), int(zmq.POLLERR)
MAX_STREAMS = 4096   # stream connections served at once; more are refused (zmq still serves)

log = logging.getLogger("mooncake_store.rpc")


class RpcServer:
    """Serve `handlers` (name -> callable(*args)) on tcp://host:port (port 0: any free port)."""

    def __init__(self, handlers: dict[str, Callable[..., Any]], host: str = "127.0.0.1",
                 port: int = 0, token: str = "", lanes: tuple[str, ...] = ("unix", "tcp")) -> None:
        if not 0 <= port < 65536:   # zmq would take it modulo 65536 and listen elsewhere
            raise InvalidParams(f"cannot listen on {host}:{port}: port out of range")
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
            raise InvalidParams(f"cannot listen on {host}:{port}: {e}") from None
        self.host = host
        self._token = token.encode()
        self.ident = os.urandom(8).hex()   # tells a stream lane of this server from any other
        self._tcp = stream.listen_tcp(host) if "tcp" in lanes else None
        self._unix_name = f"mcs-rpc-{os.getpid()}-{self.port}-{self.ident}"
        self._unix = stream.listen_unix(self._unix_name) if "unix" in lanes else None
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
        for lst in (self._tcp, self._unix):
            if lst is not None:
                lst.close()

    def lanes(self) -> dict:
        """What "_lanes" answers: this server's id and its stream endpoints."""
        return {"id": self.ident,
                "unix": self._unix_name if self._unix is not None else None,
                "tcp": self._tcp.getsockname()[1] if self._tcp is not None else None}

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        # zmq.Poller reports plain sockets by file descriptor: both maps are keyed by it.
        listeners = {x.fileno(): x for x in (self._unix, self._tcp) if x is not None}
        for fd in listeners:
            poller.register(fd, POLLIN)
        conns: dict[int, stream.ServerConn] = {}
        spin_until = 0.0
        try:
            while not self._stop.is_set():
                # Right after a stream request, look again without sleeping for a moment:
                # a client calling in a loop sends its next one within microseconds.
                wait = 100
                if spin_until and time.perf_counter() < spin_until:
                    wait = 0
                    stream.yield_cpu()   # a spinner must not keep runnable threads off its core
                try:
                    events = poller.poll(wait)  # 100 ms: wake up to notice close()
                except zmq.ZMQError:
                    return
                for obj, ev in events:
                    if obj is self._sock:
                        if not self._drain_router():
                            return
                    elif obj in listeners:
                        self._accept(listeners[obj], poller, conns)
                    else:
                        self._serve_stream(obj, ev, poller, conns)
                        spin_until = time.perf_counter() + stream.SPIN_S
        finally:
            for c in conns.values():
                c.close()

    def _drain_router(self) -> bool:
        for _ in range(10_000):   # bounded: let the stream lanes have their turn
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return True
            except zmq.ZMQError:
                return False
            if len(frames) != 2:
                self.bad_requests += 1
                continue
            reply = self._handle(frames[1])
            if reply is not None:
                try:
                    self._sock.send_multipart([frames[0], reply], zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass  # the caller went away; nothing to answer
        return True

    def _accept(self, listener: Any, poller: zmq.Poller, conns: dict) -> None:
        s = stream.accept(listener)
        if s is None:
            return
        if len(conns) >= MAX_STREAMS:
            s.close()   # the client falls back to zmq
            return
        conns[s.fileno()] = stream.ServerConn(s)
        poller.register(s.fileno(), POLLIN)

    def _serve_stream(self, fd: int, ev: int, poller: zmq.Poller, conns: dict) -> None:
        conn = conns.get(fd)
        if conn is None:
            return
        ok = True
        if ev & POLLOUT:
            ok = conn.flush()
        elif ev & (POLLIN | POLLERR):
            bodies = conn.read_frames(stream.MAX_REQUEST)
            if bodies is None:
                ok = False
            for body in bodies or ():
                reply = self._handle(body)
                if reply is not None and not conn.send(stream.frame(reply)):
                    ok = False
                    break
        if not ok:
            poller.unregister(fd)
            del conns[fd]
            conn.close()
        elif conn.out:
            poller.modify(fd, POLLOUT)   # read nothing more until the answer is out
        elif ev & POLLOUT:
            poller.modify(fd, POLLIN)

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
        if self._token and not hmac.compare_digest(token.encode(), self._token):
            return pack_response(req_id, ErrorCode.RPC_FAIL, "authentication failed: bad token")
        fn = self.handlers.get(method)
        if fn is None:
            if method == "_lanes":
                return pack_response(req_id, 0, self.lanes())
            if method == "_hello":
                return pack_response(req_id, 0, self.ident)
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
