"""Transfer targets running in their own processes (target_proc.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support.procs import stop_pid

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("target_proc.py")


class Target:
    """A target_proc.py process; `addr(kind)` gives its memfd or plain region."""

    def __init__(self, size: int = 96 << 20, token: str = "") -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("MOONCAKE_AUTH_TOKEN", None)
        self.proc = subprocess.Popen([sys.executable, str(SCRIPT), str(size), token], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            self.proc.kill()
            raise RuntimeError("target process did not start")
        info = json.loads(line)
        self.port = info["port"]
        self.name = f"127.0.0.1:{self.port}"
        self.regions = {"memfd": tuple(info["memfd"]), "plain": tuple(info["plain"])}

    def crc(self, addr: int, n: int) -> int:
        self.proc.stdin.write(f"crc {addr} {n}\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def stats(self) -> dict:
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def kill(self) -> None:
        stop_pid(self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                pass
        self.kill()
