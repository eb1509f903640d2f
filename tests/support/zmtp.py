"""A minimal hand-written ZMTP 3.0 (NULL mechanism) peer, to send the master RPC frames no
zmq socket would send: e.g. a frame header claiming 2^63 bytes."""
from __future__ import annotations

import socket
import struct

from support.net import recv_exact


def greet(port: int, socket_type: bytes = b"DEALER", timeout: float = 5.0) -> socket.socket:
    """Connect, exchange greetings and READY; return a socket ready for message frames."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    greeting = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" + bytes(31)
    s.sendall(greeting)
    recv_exact(s, 64)
    body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    s.sendall(b"\x04" + bytes([len(body)]) + body)
    # The peer's READY: a short command frame (flags, size, body).
    flags, size = recv_exact(s, 2)
    if flags & 0x02:
        size = struct.unpack(">Q", bytes([size]) + recv_exact(s, 7))[0]
    recv_exact(s, size)
    return s


def long_frame_header(claimed: int, more: bool = False) -> bytes:
    """The 9-byte header of a long frame that claims `claimed` bytes of body."""
    return bytes([0x02 | (0x01 if more else 0)]) + struct.pack(">Q", claimed)


def short_frame(body: bytes, more: bool = False) -> bytes:
    """A whole short frame (body under 256 bytes)."""
    assert len(body) < 256
    return bytes([0x01 if more else 0, len(body)]) + body
