"""Sockets on 127.0.0.1: free ports, exact-length reads, waiting for the peer to close."""
from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """n distinct loopback ports nobody listens on now, for servers that need a fixed port
    before they start. All n are held at once, so the kernel cannot hand one out twice."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """One free loopback port (see free_ports)."""
    return free_ports(1)[0]


def recv_exact(s: socket.socket, n: int) -> bytes:
    """Exactly n bytes: recv() may return less, and a raw-protocol test must read whole
    frames. ConnectionError when the peer closes first."""
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def drain_until_closed(s: socket.socket, reads: int = 64) -> bool:
    """True when the peer closes the connection (anything it sends first is dropped);
    False when it stays silent past the socket's timeout. Bounded by `reads` reads."""
    for _ in range(reads):
        try:
            if not s.recv(65536):
                return True
        except socket.timeout:
            return False
        except (ConnectionError, OSError):
            return True
    return False
