"""Admin CLI (`mstore status/ls/get/put/rm/stat`) and the /metrics and /health endpoints."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

from mooncake_store import ReplicateConfig

from support.cluster import CLI, store, wait_nodes
from support.net import free_port
from support.procs import wait_until


def mstore(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, timeout=60)
    if ok:
        assert out.returncode == 0, out.stderr.decode()
    return out


def _http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_admin_commands(cluster, tmp_path):
    m = cluster.master()
    cluster.node(m.addr)
    wait_nodes(m.addr, 1)
    src = tmp_path / "in.bin"
    src.write_bytes(bytes(range(256)) * 1000)
    mm = ["--master", m.addr]
    assert b"256000 bytes" in mstore("put", "docs/a", str(src), *mm).stdout
    mstore("put", "docs/b", str(src), *mm)
    mstore("put", "other", str(src), *mm)
    assert mstore("ls", "docs/", *mm).stdout.decode().split() == ["docs/a", "docs/b"]
    dst = tmp_path / "out.bin"
    mstore("get", "docs/a", "-o", str(dst), *mm)
    assert dst.read_bytes() == src.read_bytes()
    unwritable = mstore("get", "docs/a", "-o", str(tmp_path / "no" / "such" / "dir"), *mm, ok=False)
    assert unwritable.returncode != 0 and b"No such file or directory" in unwritable.stderr
    assert b"Traceback" not in unwritable.stderr
    assert mstore("get", "docs/b", *mm).stdout == src.read_bytes()
    st = json.loads(mstore("stat", "docs/a", *mm).stdout)
    assert st["size"] == 256000 and len(st["replicas"]) == 1
    status = json.loads(mstore("status", "--json", *mm).stdout)
    assert status["objects"] == 3 and len(status["nodes"]) == 1 and status["role"] == "leader"
    assert "docs/a" not in mstore("status", *mm).stdout.decode()   # the table: segments, not keys
    mstore("rm", "docs/a", "--force", *mm)
    miss = mstore("get", "docs/a", *mm, ok=False)
    assert miss.returncode != 0 and b"not found" in miss.stderr
    dead = mstore("status", "--master", f"127.0.0.1:{free_port()}", "--timeout-ms", "300", ok=False)
    assert dead.returncode != 0 and b"cannot reach" in dead.stderr and b"Traceback" not in dead.stderr


def test_metrics_and_health(cluster):
    mport, nport = free_port(), free_port()
    m = cluster.master("--metrics-port", str(mport))
    cluster.node(m.addr, "--metrics-port", str(nport))
    wait_nodes(m.addr, 1)
    code, text = _http(f"http://127.0.0.1:{mport}/metrics")
    assert code == 200
    assert "mstore_master_is_leader 1.0" in text and "mstore_master_nodes 1.0" in text
    assert _http(f"http://127.0.0.1:{mport}/health") == (200, "ok\n")
    code, text = _http(f"http://127.0.0.1:{nport}/metrics")
    assert code == 200 and "mstore_node_registered 1.0" in text
    assert "mstore_node_segment_bytes 3.3554432e+07" in text
    assert _http(f"http://127.0.0.1:{nport}/health")[0] == 200
    assert _http(f"http://127.0.0.1:{nport}/nope")[0] == 404


def _http_auth(url: str, header: str | None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": header} if header else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_metrics_need_the_shared_secret_and_health_reveals_nothing(cluster):
    """With a secret set, /metrics of master and node answers only `Bearer <secret>`;
    /health stays open for probes but says only ok/unhealthy; the secret is never echoed."""
    import time

    secret = "metrics-" + "s3cr3t" * 6
    mport, nport = free_port(), free_port()
    m = cluster.master("--metrics-port", str(mport), "--auth-token", secret)
    n = cluster.node(m.addr, "--metrics-port", str(nport), "--auth-token", secret)
    for _ in range(100):   # bounded: the node registers within a few heartbeats
        if _http(f"http://127.0.0.1:{nport}/health")[0] == 200:
            break
        time.sleep(0.1)
    bodies = []
    for port, series in ((mport, "mstore_master_is_leader 1.0"), (nport, "mstore_node_registered 1.0")):
        url = f"http://127.0.0.1:{port}/metrics"
        for header in (None, "Bearer wrong", f"Basic {secret}", f"Bearer {secret}x", "Bearer "):
            code, body = _http_auth(url, header)
            bodies.append(body)
            assert code == 401 and "mstore_" not in body, (header, code)
        code, body = _http_auth(url, f"Bearer {secret}")
        assert code == 200 and series in body
        bodies.append(body)
        health = _http(f"http://127.0.0.1:{port}/health")
        assert health == (200, "ok\n")
        bodies.append(health[1])
    assert all(secret not in b for b in bodies)
    for p in (m, n):
        with open(p.log, errors="replace") as f:
            assert secret not in f.read()


def test_why_a_key_misses(cluster):
    m = cluster.master(node_ttl_ms=1000)
    keep = cluster.node(m.addr)
    doomed = cluster.node(m.addr)
    wait_nodes(m.addr, 2)
    mm = ["--master", m.addr]
    with store(m.addr) as s:
        s.put("conv/root1/0001", b"a" * 5000, ReplicateConfig(preferred_segment=keep.endpoint))
        s.put("conv/gone", b"b" * 5000)
        s.remove("conv/gone")
        # A key with one replica on the node about to die.
        s.put("conv/on-doomed", b"c" * 5000, ReplicateConfig(preferred_segment=doomed.endpoint))
        assert s._index.stat("conv/on-doomed")["replicas"][0][0]["segment"] == doomed.endpoint
    out = mstore("why", "conv/root1/0001", *mm)
    assert b"stored (5000 bytes, tier dram)" in out.stdout
    removed = mstore("why", "conv/gone", *mm, ok=False)
    assert removed.returncode == 1 and b"removed by a client" in removed.stdout
    stat = mstore("stat", "conv/gone", *mm, ok=False)
    assert b"not found: removed by a client" in stat.stderr and b"Traceback" not in stat.stderr
    other_root = json.loads(mstore("why", "conv/root2/0001", "--json", *mm, ok=False).stdout)
    assert other_root["reason"] == "unknown" and other_root["similar"] == ["conv/root1/0001"]
    doomed.kill()
    with store(m.addr) as s:
        wait_until(lambda: s.why("conv/on-doomed").get("reason") == "lost", what="loss noted")
        assert s.why("conv/root1/0001")["present"]
    assert keep.p.poll() is None            # only the node we killed went
