"""Exposure: what a listening process shows to the network, and what it never shows.

- servers (master, node, metrics, transfer engine, embedded store) bind 127.0.0.1 by default;
- the transfer server touches only registered regions: requests outside are refused
  and counted, and the bytes around them are neither read out nor written;
- a wrong or missing secret is refused (transfer handshake, master RPC);
- the secret never appears in `mstore` output, repr(Config) or the servers' logs.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from mooncake_store import Config, Store
from mooncake_store.errors import ErrorCode, StoreError
from mooncake_store.rpc.client import RpcClient
from mooncake_store.transfer import AuthFailed, TransferEngine

from support.cluster import CLI, ROOT
from support.fixtures import cluster, no_ambient_secret  # noqa: F401 - fixtures, found by name
from support.net import free_port, recv_exact
from support.procs import stop_pid, wait_until
from support.wire import HDR, handshake, header

SECRET = "mcs-SeKrIt-7f3a9"


# ---- listening addresses ----------------------------------------------------------------------

def _listen_addrs(pid: int) -> set[tuple[str, int]]:
    """(ip, port) of every TCP socket in LISTEN state owned by `pid`."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    out = set()
    for table, v6 in (("tcp", False), ("tcp6", True)):
        with open(f"/proc/{pid}/net/{table}") as f:
            next(f)
            for line in f:
                parts = line.split()
                local, state, inode = parts[1], parts[3], parts[9]
                if state != "0A" or inode not in inodes:
                    continue
                hexip, hexport = local.split(":")
                raw = bytes.fromhex(hexip)
                if v6:
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    ip = socket.inet_ntop(socket.AF_INET6, raw)
                else:
                    ip = socket.inet_ntoa(raw[::-1])
                out.add((ip, int(hexport, 16)))
    return out


def _loopback_only(addrs) -> bool:
    return bool(addrs) and all(ip in ("127.0.0.1", "::1") for ip, _ in addrs)


def test_master_node_and_metrics_bind_loopback_by_default(cluster):
    m = cluster.master("--metrics-port", str(free_port()))
    n = cluster.node(m.addr, "--metrics-port", str(free_port()))
    maddrs, naddrs = _listen_addrs(m.pid), _listen_addrs(n.pid)
    assert len(maddrs) >= 2 and _loopback_only(maddrs), maddrs      # RPC + metrics
    assert len(naddrs) >= 2 and _loopback_only(naddrs), naddrs      # transfer + metrics


def test_engine_and_embedded_store_bind_loopback_by_default():
    code = ("import sys, numpy as np; from mooncake_store import Store;"
            "from mooncake_store.transfer import TransferEngine;"
            "s = Store(capacity='8MB'); s.put('k', b'v'); te = TransferEngine('');"
            "print('ready', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "MOONCAKE_AUTH_TOKEN"})
    try:
        assert p.stdout.readline().strip() == b"ready"
        addrs = _listen_addrs(p.pid)
        assert all(ip in ("127.0.0.1", "::1") for ip, _ in addrs), addrs
    finally:
        stop_pid(p)


# ---- registered regions only ------------------------------------------------------------------

def _request(port: int, op: int, addr: int, length: int, payload: bytes = b"") -> tuple[int, bytes]:
    """One request on a fresh connection: (status, bytes answered)."""
    with handshake(port, timeout=10) as s:
        s.sendall(header(op, addr, length, rid=7) + payload)
        if op == 2 and not payload:
            return 0, b""
        _, _, _, status, _, _, _, rlen = HDR.unpack(recv_exact(s, HDR.size))
        return status, recv_exact(s, rlen) if status == 0 and op == 1 else b""


def test_transfer_server_touches_only_registered_regions():
    te = TransferEngine("127.0.0.1", use_shm=False)
    arena = np.full(3 << 16, 0xAB, dtype=np.uint8)       # [guard | region | guard]
    base, size = arena.ctypes.data + (1 << 16), 1 << 16
    secret = np.frombuffer(b"NOT-REGISTERED!!" * 256, dtype=np.uint8).copy()
    try:
        te.register_memory(base, size)
        arena[1 << 16: 2 << 16] = np.arange(size, dtype=np.uint32).view(np.uint8)[:size]
        before_arena = arena.copy()
        bad0 = te.stats()["bad_requests"]
        READ, WRITE = 1, 2
        attempts = [
            (READ, base - 64, 64), (READ, base - 1, 2), (READ, base + size - 8, 16),
            (READ, base + size, 1), (READ, secret.ctypes.data, 64), (READ, 0, 64),
            (READ, base, 2**64 - 1), (READ, 2**64 - 8, 16),
            (WRITE, base - 64, 64), (WRITE, base + size - 4, 8), (WRITE, base + size, 64),
            (WRITE, secret.ctypes.data, 16),
        ]
        for op, addr, n in attempts:
            payload = b"\xEE" * n if op == WRITE and n < 1 << 20 else b""
            status, data = _request(te.port, op, addr, n, payload)
            assert status in (ErrorCode.INVALID_PARAMS, ErrorCode.BUFFER_OVERFLOW), (op, addr, n, status)
            assert data == b""
        assert te.stats()["bad_requests"] - bad0 == len(attempts)
        assert np.array_equal(arena, before_arena)                       # guards untouched
        assert bytes(secret[:16]) == b"NOT-REGISTERED!!"
        # Inside the region both directions work, and an unregistered region is gone at once.
        status, data = _request(te.port, READ, base + 100, 32)
        assert status == 0 and data == bytes(arena[(1 << 16) + 100: (1 << 16) + 132])
        te.unregister_memory(base)
        status, _ = _request(te.port, READ, base + 100, 32)
        assert status == ErrorCode.INVALID_PARAMS
        assert te.stats()["bad_requests"] - bad0 == len(attempts) + 1
    finally:
        te.close()


def test_engine_client_refuses_out_of_region_reads():
    with TransferEngine("127.0.0.1", use_shm=False) as srv, TransferEngine(use_shm=False) as cli:
        region = np.zeros(1 << 16, dtype=np.uint8)
        srv.register_memory(region.ctypes.data, region.nbytes)
        out = np.zeros(4096, dtype=np.uint8)
        rc = cli.transfer_sync_read(srv.get_local_hostname(), out, region.ctypes.data + region.nbytes - 100, 4096)
        assert rc < 0
        assert srv.stats()["bad_requests"] >= 1


# ---- authentication ---------------------------------------------------------------------------

@pytest.mark.parametrize("token", ["", "wrong", SECRET + "x"])
def test_transfer_handshake_refuses_wrong_or_missing_secret(token):
    with TransferEngine("127.0.0.1", auth_token=SECRET, use_shm=False) as srv:
        region = np.zeros(4096, dtype=np.uint8)
        srv.register_memory(region.ctypes.data, region.nbytes)
        with TransferEngine(auth_token=token, use_shm=False) as cli:
            with pytest.raises(AuthFailed):
                cli.connect(srv.get_local_hostname())
        assert srv.stats()["auth_failures"] >= 1
        with TransferEngine(auth_token=SECRET, use_shm=False) as ok:
            assert ok.transfer_sync_read(srv.get_local_hostname(), np.zeros(64, np.uint8),
                                         region.ctypes.data, 64) == 0


def _run_cli(*args, env_token: str | None = None, timeout=60):
    env = {k: v for k, v in os.environ.items() if k != "MOONCAKE_AUTH_TOKEN"}
    if env_token is not None:
        env["MOONCAKE_AUTH_TOKEN"] = env_token
    return subprocess.run([sys.executable, "-c", CLI, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_master_rpc_and_cluster_refuse_wrong_secret_and_never_echo_it(cluster):
    m = cluster.master("--auth-token", SECRET, "-v")
    n = cluster.node(m.addr, "--auth-token", SECRET, "-v")
    for token in ("", "wrong"):
        with RpcClient(m.addr, timeout_ms=3000, token=token) as c:
            with pytest.raises(StoreError, match="authentication") as ei:
                c.call("stats")
            assert SECRET not in str(ei.value)
        with pytest.raises(StoreError):
            with Store(master=m.addr, global_segment_size=0, rpc_timeout_ms=3000,
                       auth_token=token) as s:
                s.put("k", b"v")
    with Store(master=m.addr, global_segment_size=0, rpc_timeout_ms=3000, auth_token=SECRET) as s:
        wait_until(lambda: len(s.stats()["nodes"]) == 1, what="node registered")
        s.put("k", b"v" * 100)
        assert s.get("k") == b"v" * 100
    # mstore with the secret in the environment: works, never prints it.
    outs = []
    for args in (("status", "--master", m.addr, "--json"), ("ls", "--master", m.addr),
                 ("get", "k", "--master", m.addr), ("master", "--help"), ("node", "--help"),
                 ("status", "--master", m.addr)):
        r = _run_cli(*args, env_token=SECRET)
        outs.append(r.stdout + r.stderr)
    assert '"objects"' in outs[0] and "v" * 100 in outs[2]   # the secret from the env worked
    r = _run_cli("status", "--master", m.addr, env_token="wrong")
    assert r.returncode != 0
    outs.append(r.stdout + r.stderr)
    for out in outs:
        assert SECRET not in out
    m.kill(), n.kill()
    for p in (m, n):
        with open(p.log, errors="replace") as f:
            log = f.read()
        assert SECRET not in log


def test_config_never_shows_the_secret():
    c = Config.load(env={"MOONCAKE_AUTH_TOKEN": SECRET})
    assert c.auth_token == SECRET
    assert SECRET not in repr(c) and SECRET not in str(c)
    with Store(capacity="8MB", auth_token=SECRET) as s:
        assert SECRET not in repr(s)
        assert SECRET not in repr(s.stats())


def test_binding_wider_without_a_secret_warns():
    import subprocess
    import sys

    def first_lines(*args):
        p = subprocess.Popen([sys.executable, "-m", "mooncake_store.cli.main", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={k: v for k, v in os.environ.items() if k != "MOONCAKE_AUTH_TOKEN"})
        try:
            _, err = p.communicate(timeout=4)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        return err

    err = first_lines("master", "--host", "0.0.0.0", "--port", "0")
    assert "without an auth token" in err
    err = first_lines("master", "--host", "0.0.0.0", "--port", "0", "--auth-token", "s3cret")
    assert "without an auth token" not in err and "s3cret" not in err
