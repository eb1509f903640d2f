"""The stream lane: the same RPC messages over a plain stream socket, length-prefixed.

Why it exists: a zmq round trip crosses four threads (caller -> zmq I/O thread ->
peer's I/O thread -> handler, and back), 40-80 us on a loaded 2-core host, while a
blocking socket round trip is 10-15 us. The zmq ROUTER endpoint stays the public
one; the server also listens on a Unix socket (abstract name, same host only) and a
TCP port, and a client that has reached it over zmq asks for these ("_lanes"),
connects to the first that proves to be the same server ("_hello" returns the
server's random id), and sends its small calls there. Same messages, same handler
thread, same token check, same typed errors; only the framing differs:

    frame: u32 little-endian body length, then the msgpack body (a request or response)

Requests larger than MAX_REQUEST go over zmq. A frame claiming more is refused
before anything is allocated (the connection is dropped).
"""
from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time

from ..errors import RpcFailed, RpcTimeout
from .protocol import BadMessage, unpack_response

MAX_REQUEST = 1 << 20       # larger requests take the zmq lane
# Spin (poll without sleeping) this long for an answer, and the server for a next request,
# before blocking: waking a sleeping (v)CPU costs 20-40 us per hop on an idle VM, more than
# the whole call. Bounded and short, so an idle peer costs nothing and a busy one little.
SPIN_S = max(0, int(os.environ.get("MOONCAKE_RPC_SPIN_US", "60"))) / 1e6
yield_cpu = getattr(os, "sched_yield", lambda: None)
MAX_RESPONSE = 1 << 31      # a reply (e.g. a key listing) may be large, never this large
_LEN = struct.Struct("<I")
_IN = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR


def frame(body: bytes) -> bytes:
    return _LEN.pack(len(body)) + body


# ---- server side ------------------------------------------------------------------------

class ServerConn:
    """One accepted stream: buffered input split into frames, output that did not fit the
    socket buffer kept until it is writable (no more requests are read meanwhile)."""

    __slots__ = ("sock", "inbuf", "out")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.out = b""

    def read_frames(self, limit: int) -> list[bytes] | None:
        """Complete request bodies read so far; None when the peer closed or broke the
        framing (the caller drops the connection)."""
        try:
            data = self.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            return None
        if not data:
            return None
        if not self.inbuf and len(data) >= 4:   # the common case: exactly one whole frame
            n = _LEN.unpack_from(data)[0]
            if n > limit:
                return None
            if len(data) == 4 + n:
                return [data[4:]]
        self.inbuf += data
        out = []
        while len(self.inbuf) >= 4:
            n = _LEN.unpack_from(self.inbuf)[0]
            if n > limit:
                return None
            if len(self.inbuf) < 4 + n:
                break
            out.append(bytes(self.inbuf[4:4 + n]))
            del self.inbuf[:4 + n]
        return out

    def send(self, data: bytes) -> bool:
        """Queue and push out `data`; False when the peer is gone."""
        self.out = self.out + data if self.out else data
        return self.flush()

    def flush(self) -> bool:
        try:
            while self.out:
                n = self.sock.send(self.out)
                self.out = self.out[n:]
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def listen_tcp(host: str) -> socket.socket | None:
    """A listening TCP socket on `host`, any free port; None when that cannot be had."""
    h = "" if host in ("*", "0.0.0.0") else host
    try:
        fam = socket.AF_INET6 if ":" in h else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((h, 0))
        s.listen(128)
        s.setblocking(False)
        return s
    except OSError:
        return None


def listen_unix(name: str) -> socket.socket | None:
    """A listening Unix socket in the abstract namespace (Linux: no file to clean up)."""
    if not hasattr(socket, "AF_UNIX"):
        return None
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind("\0" + name)
        s.listen(128)
        s.setblocking(False)
        return s
    except OSError:
        return None


def accept(listener: socket.socket) -> socket.socket | None:
    try:
        s, _ = listener.accept()
    except OSError:
        return None
    s.setblocking(False)
    if s.family != getattr(socket, "AF_UNIX", None):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


# ---- client side ------------------------------------------------------------------------

class Lane:
    """A connected stream to one server. Not thread-safe: RpcClient holds its lock."""

    def __init__(self, sock: socket.socket, kind: str) -> None:
        self.sock = sock
        self.kind = kind
        sock.setblocking(False)
        self._poll = select.poll()
        self._poll.register(sock.fileno(), _IN)
        self._buf = bytearray(1 << 16)

    @classmethod
    def connect(cls, kind: str, where: str | tuple, timeout_s: float) -> "Lane":
        fam = socket.AF_UNIX if kind == "unix" else \
            (socket.AF_INET6 if ":" in where[0] else socket.AF_INET)
        s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.settimeout(max(0.001, timeout_s))
            s.connect(where)
            if kind == "tcp":
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            s.close()
            raise
        return cls(s, kind)

    def usable(self) -> bool:
        """No event may be pending on an idle lane: one means the server closed it
        (restart) or sent something unasked; either way the lane is done."""
        return not self._poll.poll(0)

    def call(self, body: bytes, deadline: float, what: str) -> tuple:
        """Send one request, return the unpacked response. RpcFailed when the lane breaks
        (`sent` on the exception says whether the whole request went out), RpcTimeout when
        no answer came by `deadline` (time.monotonic())."""
        data = frame(body)
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as e:
            raise _broken(what, e, sent=False) from None
        if n < len(data):
            self._send_rest(memoryview(data)[n:], deadline, what)
        return self._recv(deadline, what)

    def _send_rest(self, rest: memoryview, deadline: float, what: str) -> None:
        p = select.poll()
        p.register(self.sock.fileno(), select.POLLOUT)
        for _ in range(1 << 20):   # bounded; the deadline ends it first
            left = _left_ms(deadline)
            if left <= 0 or not p.poll(left):
                raise RpcTimeout(f"{what}: request not sent within the timeout")
            try:
                rest = rest[self.sock.send(rest):]
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                raise _broken(what, e, sent=False) from None
            if not rest:
                return

    def _recv(self, deadline: float, what: str) -> tuple:
        buf, got, need = self._buf, 0, 4
        view = memoryview(buf)
        spin_until = time.perf_counter() + SPIN_S
        for _ in range(1 << 20):   # bounded; the deadline ends it first
            try:
                n = self.sock.recv_into(view[got:])
            except (BlockingIOError, InterruptedError):
                if time.perf_counter() < spin_until:
                    yield_cpu()   # the server may be runnable on this very core
                    continue
                left = _left_ms(deadline)
                if left <= 0 or not self._poll.poll(left):
                    raise RpcTimeout(f"{what}: no answer within the timeout") from None
                continue
            except OSError as e:
                raise _broken(what, e, sent=True) from None
            if n == 0:
                raise _broken(what, None, sent=True)
            got += n
            if need == 4 and got >= 4:
                need = 4 + _LEN.unpack_from(buf)[0]
                if need > MAX_RESPONSE:
                    raise RpcFailed(f"{what}: answer claims {need - 4} bytes")
                if need > len(buf):
                    view.release()
                    buf = bytearray(buf[:got]) + bytearray(need - got)
                    view = memoryview(buf)
            if got >= need:
                try:
                    return unpack_response(view[4:need])
                except BadMessage as e:
                    raise RpcFailed(f"{what}: bad answer: {e}") from None
                finally:
                    view.release()
        raise RpcTimeout(f"{what}: no answer within the timeout")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _left_ms(deadline: float) -> int:
    return int((deadline - time.monotonic()) * 1000)


def _broken(what: str, e: OSError | None, sent: bool) -> RpcFailed:
    err = RpcFailed(f"{what}: connection to the server lost"
                    + (f" ({errno.errorcode.get(e.errno, e.errno)})" if e and e.errno else ""))
    err.sent = sent
    return err

