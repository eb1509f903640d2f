"""A hand-written client of the engine's wire protocol (docs/transfer.md),
used to send requests the real engine would never send."""
from __future__ import annotations

import os
import socket
import struct

HS_MAGIC, MAGIC, VERSION = 0x4853434D, 0x3153434D, 1
HELLO = struct.Struct("<IHHII32s40s64s")        # 152 bytes
REPLY = struct.Struct("<IHH32s32s")             # 72 bytes
VERDICT = struct.Struct("<Ii32s")               # 40 bytes
HDR = struct.Struct("<IHHiIQQQ")                # 40 bytes


def recv_exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def connect(port: int, mac: bytes = b"\0" * 32, flags: int = 0, timeout: float = 5.0):
    """Handshake without a secret; returns (socket, verdict status)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    HELLO.unpack(recv_exact(s, HELLO.size))
    s.sendall(REPLY.pack(HS_MAGIC, VERSION, flags, os.urandom(32), mac))
    _, status, _ = VERDICT.unpack(recv_exact(s, VERDICT.size))
    return s, status


def header(op: int, addr: int, length: int, rid: int = 1, magic: int = MAGIC, version: int = VERSION,
           status: int = 0, reserved: int = 0) -> bytes:
    return HDR.pack(magic, version, op, status, reserved, rid, addr, length)
