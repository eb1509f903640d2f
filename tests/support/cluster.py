"""Master, node and etcd processes on 127.0.0.1, started from the `mstore` CLI and killed
by PID. Used by tests/cluster, tests/chaos, tests/test_exposure.py and the bench scripts
that need a real cluster (bench/soak.py, bench/cluster_batch.py)."""
from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

import pytest

from support.net import free_port
from support.procs import stop_pid, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = "from mooncake_store.cli.main import app; app()"
START_TIMEOUT_S = 60.0   # a loaded 2-core CI machine can be slow to start Python
# Short timers keep the suite fast: heartbeats every 100 ms, a node is dead after 1 s.
FAST = ["--heartbeat-ms", "100"]
LEASE = ["--lease-ttl-ms", "1000"]


class Proc:
    """One `mstore` process; ready once its stdout shows the `ready` text (that line is kept
    in .line), its stderr goes to <logdir>/<name>.log."""

    def __init__(self, argv: list[str], ready: str, logdir: str, name: str) -> None:
        self.name = name
        self.log = os.path.join(logdir, f"{name}.log")
        self.argv = argv
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(self.log, "ab"), cwd=ROOT)
        self.line = self._wait_for(ready)
        self.pid = self.p.pid

    def _wait_for(self, ready: str) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        buf = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.p.stdout], [], [], 0.2)
            if r:
                chunk = os.read(self.p.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                for line in buf.decode(errors="replace").splitlines():
                    if ready in line:
                        return line
            elif self.p.poll() is not None:
                break
        self.kill()
        with open(self.log, errors="replace") as f:
            raise RuntimeError(f"{self.name} did not start ({self.argv}):\n{buf.decode()}\n{f.read()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        stop_pid(self.p, sig)
        if self.p.stdout:
            self.p.stdout.close()

    @property
    def alive(self) -> bool:
        return self.p.poll() is None


class Cluster:
    """Starts processes; everything it started is killed (by PID) when the test ends."""

    def __init__(self, logdir: str) -> None:
        self.logdir = logdir
        self.procs: list[Proc] = []
        self.n = 0

    def _start(self, args: list[str], ready: str, name: str) -> Proc:
        self.n += 1
        p = Proc([sys.executable, "-c", CLI, *args], ready, self.logdir, f"{name}{self.n}")
        self.procs.append(p)
        return p

    def master(self, *extra: str, port: int = 0, node_ttl_ms: int = 1000,
               put_timeout_ms: int = 30_000) -> Proc:
        p = self._start(["master", "--port", str(port), "--node-ttl-ms", str(node_ttl_ms),
                         "--put-timeout-ms", str(put_timeout_ms), *FAST, *LEASE, *extra],
                        "master listening on", "master")
        p.addr = p.line.split()[-1]
        return p

    def node(self, master: str, *extra: str, dram: str = "32MB", port: int = 0) -> Proc:
        p = self._start(["node", "--master", master, "--dram", dram, "--port", str(port),
                         "--timeout-ms", "1000", *FAST, *extra], "serving", "node")
        p.endpoint = p.line.split()[-1]
        return p

    def close(self) -> None:
        for p in self.procs:
            p.kill()


def store(master: str, **kw):
    """A client Store of `master` that holds no segment of its own, with a short RPC timeout."""
    from mooncake_store import Store

    kw.setdefault("global_segment_size", 0)
    kw.setdefault("rpc_timeout_ms", 2000)
    return Store(master=master, **kw)


CHILD_GET = """
import hashlib, sys
from mooncake_store import Store
s = Store(master=sys.argv[1], global_segment_size=0, rpc_timeout_ms=5000)
for key in sys.argv[2:]:
    print(key, hashlib.sha256(s.get(key)).hexdigest(), flush=True)
s.close()
"""


def read_elsewhere(master: str, keys) -> dict[str, str]:
    """key -> sha256 hex of its value, as read by a fresh client in another process."""
    out = subprocess.run([sys.executable, "-c", CHILD_GET, master, *keys], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return dict(line.split() for line in out.stdout.splitlines())


def client_that_dies(cluster, script: str, put_timeout_ms: int):
    """A master (reclaiming after put_timeout_ms) with one node, and a client process that
    runs `script` (argv[1] = the master) and exits without closing its store: (master, the
    script's stdout)."""
    m = cluster.master(put_timeout_ms=put_timeout_ms)
    cluster.node(m.addr)
    wait_nodes(m.addr, 1)
    out = subprocess.run([sys.executable, "-c", script, m.addr], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return m, out.stdout


def wait_nodes(master: str, n: int) -> None:
    """Until the master lists exactly n nodes."""
    with store(master) as s:
        wait_until(lambda: len(s.stats()["nodes"]) == n, what=f"{n} nodes registered")


def master_role(addr: str) -> str:
    """What a master says it is ("leader", "standby", "recovering"), or "dead" when it
    does not answer within half a second."""
    from mooncake_store.rpc import RpcClient

    try:
        with RpcClient(addr, timeout_ms=500) as c:
            return c.call("ping")["role"]
    except Exception:  # noqa: BLE001 - a dead master has no role
        return "dead"


@contextmanager
def after_master_restart(cluster: "Cluster", master: Proc, port: int, values: dict, nodes: int):
    """kill -9 `master`, start a new one on the same port, and yield a client of it once
    `nodes` nodes re-registered and every key of `values` reads back byte-exact (the index
    was rebuilt from the nodes' inventories)."""
    master.kill()
    m2 = cluster.master(port=port)
    with store(m2.addr) as s:
        wait_until(lambda: len(s.stats()["nodes"]) == nodes, what="nodes re-registered")
        assert sorted(s.keys()) == sorted(values)
        for k, v in values.items():
            assert s.get(k) == v, k
        yield s


class Etcd:
    """A single-member etcd on two free loopback ports (the test is skipped without etcd)."""

    def __init__(self, tmp: str) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            pytest.skip("etcd binary not installed (Debian package etcd-server)")
        self.client_port, peer_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.data = tempfile.mkdtemp(dir=tmp, prefix="etcd-")
        self.log = open(os.path.join(tmp, "etcd.log"), "ab")
        self.p = subprocess.Popen(
            [binary, "--data-dir", self.data, "--name", "mcs-test",
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
             "--initial-cluster", f"mcs-test=http://127.0.0.1:{peer_port}"],
            stdout=self.log, stderr=self.log)
        from mooncake_store.meta.etcd import EtcdClient

        client = EtcdClient(f"etcd://127.0.0.1:{self.client_port}")
        wait_until(client.healthy, timeout=START_TIMEOUT_S, what="etcd up")
        self.endpoint = f"etcd://127.0.0.1:{self.client_port}"

    def close(self) -> None:
        stop_pid(self.p)
        self.log.close()
