"""A hand-written client of the transfer engine's tcp protocol (docs/transfer.md), used to
send what the real engine never would: bad headers, forged MACs, reads outside a region."""
from __future__ import annotations

import os
import socket
import struct

from support.net import recv_exact

HS_MAGIC, MAGIC, VERSION = 0x4853434D, 0x3153434D, 1
HELLO = struct.Struct("<IHHII32s40s64s")        # 152 bytes, server -> client
REPLY = struct.Struct("<IHH32s32s")             # 72 bytes, client -> server
VERDICT = struct.Struct("<Ii32s")               # 40 bytes, server -> client
HDR = struct.Struct("<IHHiIQQQ")                # 40 bytes, each request and answer


def connect(port: int, mac: bytes = b"\0" * 32, flags: int = 0, timeout: float = 5.0):
    """Handshake without a secret; returns (socket, verdict status), whatever the verdict."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    HELLO.unpack(recv_exact(s, HELLO.size))
    s.sendall(REPLY.pack(HS_MAGIC, VERSION, flags, os.urandom(32), mac))
    _, status, _ = VERDICT.unpack(recv_exact(s, VERDICT.size))
    return s, status


def handshake(port: int, timeout: float = 5.0) -> socket.socket:
    """A connection the server accepted (no secret), ready for request headers."""
    s, status = connect(port, timeout=timeout)
    if status != 0:
        s.close()
        raise AssertionError(f"handshake refused with status {status}")
    return s


def header(op: int, addr: int = 0, length: int = 0, rid: int = 1, magic: int = MAGIC, version: int = VERSION,
           status: int = 0, reserved: int = 0) -> bytes:
    """One request header; every field can be set to a value the engine would never send."""
    return HDR.pack(magic, version, op, status, reserved, rid, addr, length)
