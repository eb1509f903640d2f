"""A network namespace joined to this one by a veth pair, made and removed by the test.

Only a private /30 on the veth link is used; nothing leaves the machine. `cut()`
takes the link down (packets vanish, no RST: the nastiest partition), `heal()`
brings it back.
"""
from __future__ import annotations

import os
import subprocess


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


class VethNamespace:
    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.ns, self.out, self.inside = f"mcsns{tag}", f"mcsa{tag}", f"mcsb{tag}"
        net = 16 + os.getpid() % 200
        self.host_ip, self.ns_ip = f"10.213.{net}.1", f"10.213.{net}.2"
        self._made = False

    def create(self) -> str | None:
        """None when ready, else why not (the caller skips)."""
        if os.geteuid() != 0:
            return "network namespaces need root"
        r = _ip("netns", "add", self.ns)
        if r.returncode != 0:
            return f"ip netns add refused: {r.stderr.strip()}"
        self._made = True
        for args in (("link", "add", self.out, "type", "veth", "peer", "name", self.inside),
                     ("link", "set", self.inside, "netns", self.ns),
                     ("addr", "add", f"{self.host_ip}/30", "dev", self.out),
                     ("link", "set", self.out, "up"),
                     ("-n", self.ns, "addr", "add", f"{self.ns_ip}/30", "dev", self.inside),
                     ("-n", self.ns, "link", "set", self.inside, "up"),
                     ("-n", self.ns, "link", "set", "lo", "up")):
            r = _ip(*args)
            if r.returncode != 0:
                self.remove()
                return f"ip {' '.join(args)}: {r.stderr.strip()}"
        return None

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]

    def cut(self) -> None:
        _ip("link", "set", self.out, "down")

    def heal(self) -> None:
        _ip("link", "set", self.out, "up")

    def remove(self) -> None:
        if self._made:
            _ip("link", "del", self.out)         # removes both ends
            _ip("netns", "del", self.ns)
            self._made = False
